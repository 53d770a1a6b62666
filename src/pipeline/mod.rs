//! The timely dataflow.
