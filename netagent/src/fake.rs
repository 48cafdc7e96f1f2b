//! In-memory kernel (filled in below).
