//! nocturne-functions: the function SDK.
pub mod builtin;
