// LCM: see src/ops/lcm.rs
