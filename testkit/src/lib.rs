//! Test helpers for privileged tests.
