//! Genesys Cloud client. (A helper is building this module.)
