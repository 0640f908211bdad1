//! Marker library target: aya-build needs a library to depend on; the
//! programs themselves are in `main.rs`.
#![no_std]
