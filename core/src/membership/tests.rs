//! Unit tests for the membership machine.
