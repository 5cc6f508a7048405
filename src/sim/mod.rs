//! Genesys Cloud simulator. (A helper is building this module.)
