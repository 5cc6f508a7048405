//! Helpers shared by test binaries (each binary uses what it needs).

#![allow(dead_code)]

pub mod genesys;
