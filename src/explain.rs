//! Alert explanations.
