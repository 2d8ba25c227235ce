//! Formatting of command results for people (text, markdown) and programs (json).

pub mod diff;
