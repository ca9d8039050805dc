//! The CTI world's formats: STIX 2.1 objects from and to indicators
//! ([`stix`]), MISP events ([`misp`]) and CSV ([`csv`]) to drafts. Pure
//! mappings; reading and writing files, and publishing, are the CLI's.

pub mod csv;
pub mod misp;
pub mod stix;
