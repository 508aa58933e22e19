//! WGSL sources (embedded, so wasm has them) and a tiny preprocessor for variants.
//!
//! A variant is the shader text with `#if NAME` / `#else` / `#endif` blocks resolved and every
//! define emitted as a WGSL `const` at the top, so defines can size workgroups and arrays.

/// Every kernel family Keel has: (file name, source).
pub const SOURCES: &[(&str, &str)] = &[
    ("embed", include_str!("../../shaders/embed.wgsl")),
    ("norm", include_str!("../../shaders/norm.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("matvec", include_str!("../../shaders/matvec.wgsl")),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    ("attention_decode", include_str!("../../shaders/attention_decode.wgsl")),
    ("act", include_str!("../../shaders/act.wgsl")),
    ("stats", include_str!("../../shaders/stats.wgsl")),
    ("draw", include_str!("../../shaders/draw.wgsl")),
    ("dequant", include_str!("../../shaders/dequant.wgsl")),
    ("lcm", include_str!("../../shaders/lcm.wgsl")),
    ("lcm_backward", include_str!("../../shaders/lcm_backward.wgsl")),
    ("norm_backward", include_str!("../../shaders/norm_backward.wgsl")),
    ("act_backward", include_str!("../../shaders/act_backward.wgsl")),
    ("embed_backward", include_str!("../../shaders/embed_backward.wgsl")),
    ("rope_backward", include_str!("../../shaders/rope_backward.wgsl")),
    ("attention_backward", include_str!("../../shaders/attention_backward.wgsl")),
    ("xent", include_str!("../../shaders/xent.wgsl")),
    ("grad_norm", include_str!("../../shaders/grad_norm.wgsl")),
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("hgc", include_str!("../../shaders/hgc.wgsl")),
    ("cgfm", include_str!("../../shaders/cgfm.wgsl")),
    ("align", include_str!("../../shaders/align.wgsl")),
    ("trace", include_str!("../../shaders/trace.wgsl")),
    // Not kernels: pasted in by `#include reduce` / `#include wfmt` / `#include activation`.
    ("wfmt", include_str!("../../shaders/wfmt.wgsl")),
    ("activation", include_str!("../../shaders/activation.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
];

/// The source of one kernel family.
pub fn source(name: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("no shader named {name}"))
}

/// A define: name and value. Flags use value 1; `#if NAME` is true when the define exists
/// and is not "0".
pub type Define = (&'static str, u32);

/// Resolves `#include NAME` (pastes another entry of [`SOURCES`]), then `#if`/`#else`/`#endif`
/// (nestable), and prepends `const NAME = value;` lines.
pub fn preprocess(src: &str, defines: &[Define]) -> String {
    let src: String = src
        .lines()
        .map(|line| match line.trim_start().strip_prefix("#include ") {
            Some(name) => source(name.trim()).to_string(),
            None => format!("{line}\n"),
        })
        .collect();
    let mut out = String::with_capacity(src.len() + 64);
    for (name, value) in defines {
        out.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    // Stack of (this branch active, any enclosing branch inactive).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(on, _)| *on);
    for line in src.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("#if ") {
            let on = defines.iter().any(|(n, v)| *n == name.trim() && *v != 0);
            stack.push((on, !active(&stack)));
        } else if t.starts_with("#else") {
            let (on, _) = stack.pop().expect("#else without #if");
            stack.push((!on, false));
        } else if t.starts_with("#endif") {
            stack.pop().expect("#endif without #if");
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "unterminated #if");
    // WGSL wants `enable` directives before everything else, the defines' consts included.
    let (enables, rest): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|l| l.trim_start().starts_with("enable "));
    enables.iter().chain(&rest).map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_resolves_nested_blocks() {
        let src = "a\n#if X\nb\n#if Y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n";
        let body = |d: &[Define]| {
            preprocess(src, d).lines().filter(|l| !l.starts_with("const")).collect::<Vec<_>>().join(",")
        };
        assert_eq!(body(&[]), "a,e,f");
        assert_eq!(body(&[("X", 1)]), "a,b,d,f");
        assert_eq!(body(&[("X", 1), ("Y", 1)]), "a,b,c,f");
        assert_eq!(body(&[("X", 0), ("Y", 1)]), "a,e,f");
        assert!(preprocess(src, &[("X", 1)]).starts_with("const X: u32 = 1u;\n"));
        assert!(
            preprocess("a\n#if X\nenable f16;\n#endif\n", &[("X", 1)]).starts_with("enable f16;\nconst X")
        );
        let included = preprocess("a\n#include reduce\nb\n", &[]);
        assert!(
            included.starts_with("a\n") && included.ends_with("b\n") && included.contains("fn workgroup_sum")
        );
    }

    /// Every variant any op can ask for parses and validates with naga (no GPU needed).
    #[test]
    fn every_shader_variant_validates() {
        let mut count = 0;
        for (name, defines) in crate::ops::all_variants() {
            let text = preprocess(source(name), &defines);
            let module = naga::front::wgsl::parse_str(&text)
                .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&text)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name} {defines:?}: {e:?}"));
            count += 1;
        }
        assert!(count >= 10, "only {count} variants");
    }
}
