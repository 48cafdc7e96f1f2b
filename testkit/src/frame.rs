//! Raw frames (below).
