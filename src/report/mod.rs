//! Reports people read: SVG charts ([`svg`]).

pub mod svg;
