//! Synthetic worlds for benchmarks and property tests (filled in below).
