//! Reports people read: SVG charts ([`svg`]), self-contained HTML pages ([`html`]), and the
//! comparison report ([`compare`]).

pub mod analysis;
pub mod compare;
pub mod finetune;
pub mod html;
pub mod svg;
pub mod sweep;
