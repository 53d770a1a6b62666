//! Alert policy.
