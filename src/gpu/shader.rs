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
    ("gemm", include_str!("../../shaders/gemm.wgsl")),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    ("attention_decode", include_str!("../../shaders/attention_decode.wgsl")),
    ("attention_flash", include_str!("../../shaders/attention_flash.wgsl")),
    ("act", include_str!("../../shaders/act.wgsl")),
    ("stats", include_str!("../../shaders/stats.wgsl")),
    ("draw", include_str!("../../shaders/draw.wgsl")),
    ("dequant", include_str!("../../shaders/dequant.wgsl")),
    ("lcm", include_str!("../../shaders/lcm.wgsl")),
    ("lcm_scan", include_str!("../../shaders/lcm_scan.wgsl")),
    ("lcm_backward", include_str!("../../shaders/lcm_backward.wgsl")),
    ("norm_backward", include_str!("../../shaders/norm_backward.wgsl")),
    ("act_backward", include_str!("../../shaders/act_backward.wgsl")),
    ("embed_backward", include_str!("../../shaders/embed_backward.wgsl")),
    ("rope_backward", include_str!("../../shaders/rope_backward.wgsl")),
    ("attention_backward", include_str!("../../shaders/attention_backward.wgsl")),
    ("xent", include_str!("../../shaders/xent.wgsl")),
    ("softcap", include_str!("../../shaders/softcap.wgsl")),
    ("grad_norm", include_str!("../../shaders/grad_norm.wgsl")),
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("hgc", include_str!("../../shaders/hgc.wgsl")),
    ("cgfm", include_str!("../../shaders/cgfm.wgsl")),
    ("align", include_str!("../../shaders/align.wgsl")),
    ("trace", include_str!("../../shaders/trace.wgsl")),
    // Not kernels: pasted into them by `#include NAME`.
    ("wfmt", include_str!("../../shaders/wfmt.wgsl")),
    ("operand", include_str!("../../shaders/operand.wgsl")),
    ("window", include_str!("../../shaders/window.wgsl")),
    ("attention_merge", include_str!("../../shaders/attention_merge.wgsl")),
    ("lcm_step", include_str!("../../shaders/lcm_step.wgsl")),
    ("activation", include_str!("../../shaders/activation.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("lcm_reduce", include_str!("../../shaders/lcm_reduce.wgsl")),
    ("lcm_io", include_str!("../../shaders/lcm_io.wgsl")),
    ("attention_io", include_str!("../../shaders/attention_io.wgsl")),
    ("cap", include_str!("../../shaders/cap.wgsl")),
    ("logit_merge", include_str!("../../shaders/logit_merge.wgsl")),
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

/// The kernel with every entry point returning as it starts (the empty-kernel experiment,
/// [`KernelOptions::empty`](super::KernelOptions)): the body stays in place behind the return,
/// so the entry point still uses every binding and the pipeline's layout is unchanged.
pub fn empty_bodies(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut in_entry_signature = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("@compute") {
            in_entry_signature = true;
        }
        if in_entry_signature && line.trim_end().ends_with('{') {
            out.push_str("    if (KEEL_EMPTY_KERNEL) { return; }\n");
            in_entry_signature = false;
        }
    }
    assert!(!in_entry_signature, "an entry point's signature does not end in '{{'");
    // After any `enable` directives, which must come first.
    let at = out.lines().take_while(|l| l.trim_start().starts_with("enable ")).map(|l| l.len() + 1).sum();
    out.insert_str(at, "const KEEL_EMPTY_KERNEL: bool = true;\n");
    out
}

/// The kernel with every workgroup variable its entry points use filled with all-ones bits
/// (NaN as floats, 0xffffffff as integers) before their first statement, then a barrier.
/// Native builds skip WebGPU's zeroing of workgroup memory, so a kernel must write each slot
/// before reading it; the library's unit tests run every kernel this way, where one that
/// relied on zeros reads NaN or a wild index instead and fails its CPU-reference test.
#[cfg(not(target_arch = "wasm32"))]
pub fn poisoned_workgroup_memory(text: &str) -> Result<String, String> {
    use wgpu::naga::{self, AddressSpace, Binding, BuiltIn, TypeInner};
    let module = naga::front::wgsl::parse_str(text).map_err(|e| e.emit_to_string(text))?;
    let info =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| format!("{e:?}"))?;
    // The poison value of one element, written from the runtime word `keel_poison` (a constant
    // NaN would be refused by WGSL's constant evaluation).
    fn value(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Result<String, String> {
        let scalar = |s: naga::Scalar| match (s.kind, s.width) {
            (naga::ScalarKind::Float, 4) => Ok("bitcast<f32>(keel_poison)".to_string()),
            (naga::ScalarKind::Float, 2) => Ok("f16(bitcast<f32>(keel_poison))".to_string()),
            (naga::ScalarKind::Uint, 4) => Ok("keel_poison".to_string()),
            (naga::ScalarKind::Sint, 4) => Ok("bitcast<i32>(keel_poison)".to_string()),
            other => Err(format!("no poison for a workgroup scalar {other:?}")),
        };
        match &module.types[ty].inner {
            TypeInner::Scalar(s) => scalar(*s),
            TypeInner::Vector { size, scalar: s } => Ok(format!("vec{}({})", *size as u8, scalar(*s)?)),
            TypeInner::Struct { members, .. } => {
                let name = module.types[ty].name.clone().ok_or("an unnamed workgroup struct")?;
                let fields: Result<Vec<_>, _> = members.iter().map(|m| value(module, m.ty)).collect();
                Ok(format!("{name}({})", fields?.join(", ")))
            }
            other => Err(format!("no poison for a workgroup {other:?}")),
        }
    }
    // The statement that poisons `place` of type `ty`; `lid` and `threads` spread arrays over
    // the workgroup's threads.
    fn poison(
        module: &naga::Module,
        place: &str,
        ty: naga::Handle<naga::Type>,
        lid: &str,
        threads: u32,
    ) -> Result<String, String> {
        Ok(match &module.types[ty].inner {
            TypeInner::Atomic(_) => format!("atomicStore(&{place}, keel_poison);"),
            TypeInner::Array { base, size: naga::ArraySize::Constant(n), .. } => {
                let element = poison(module, &format!("{place}[keel_i]"), *base, lid, 1)?;
                format!("for (var keel_i = {lid}; keel_i < {n}u; keel_i += {threads}u) {{ {element} }}")
            }
            _ => format!("{place} = {};", value(module, ty)?),
        })
    }
    let mut prologues = std::collections::HashMap::new();
    for (i, entry) in module.entry_points.iter().enumerate() {
        let uses = info.get_entry_point(i);
        // The entry's own local_invocation_index, or a parameter added for it.
        let mut lid = None;
        for arg in &entry.function.arguments {
            let name = arg.name.clone().unwrap_or_default();
            match (&arg.binding, &module.types[arg.ty].inner) {
                (Some(Binding::BuiltIn(BuiltIn::LocalInvocationIndex)), _) => lid = Some((name, false)),
                (None, TypeInner::Struct { members, .. }) => {
                    for m in members {
                        if m.binding == Some(Binding::BuiltIn(BuiltIn::LocalInvocationIndex)) {
                            lid = Some((format!("{name}.{}", m.name.clone().unwrap_or_default()), false));
                        }
                    }
                }
                _ => {}
            }
        }
        let (lid, added) = lid.unwrap_or(("keel_poison_lid".to_string(), true));
        let threads: u32 = entry.workgroup_size.iter().product();
        let mut body = format!("    let keel_poison = 0xffffffffu | {lid};\n");
        for (handle, var) in module.global_variables.iter() {
            if var.space == AddressSpace::WorkGroup && !uses[handle].is_empty() {
                let name = var.name.clone().unwrap_or_default();
                body += &format!("    {}\n", poison(&module, &name, var.ty, &lid, threads)?);
            }
        }
        body += "    workgroupBarrier();\n";
        prologues.insert(entry.name.clone(), (body, added));
    }
    let mut out = String::with_capacity(text.len() + 1024);
    let mut pending: Option<&(String, bool)> = None;
    let mut in_entry = false;
    for line in text.lines() {
        let mut line = line.to_string();
        if line.trim_start().starts_with("@compute") {
            in_entry = true;
        }
        if in_entry && pending.is_none() {
            if let Some(rest) = line.split("fn ").nth(1) {
                let name = rest.split('(').next().unwrap_or_default().trim();
                let entry = prologues.get(name).ok_or(format!("entry point '{name}' not found by naga"))?;
                if entry.1 {
                    line = line.replacen('(', "(@builtin(local_invocation_index) keel_poison_lid: u32, ", 1);
                }
                pending = Some(entry);
            }
        }
        out.push_str(&line);
        out.push('\n');
        if let Some((body, _)) = pending.filter(|_| line.trim_end().ends_with('{')) {
            out.push_str(body);
            pending = None;
            in_entry = false;
        }
    }
    Ok(out)
}

/// What the Rust side of a kernel must match: the size of its uniform block (binding 0) and
/// the names of its storage bindings 1, 2, ... in order, as the preprocessed WGSL declares them.
#[derive(Clone, Debug, PartialEq)]
pub struct Contract {
    /// Bytes of the uniform struct at binding 0.
    pub uniform_bytes: u32,
    /// Names of the storage bindings from 1 on.
    pub storage: Vec<String>,
}

impl Contract {
    /// Reads the contract from preprocessed WGSL (naga's parse: the bindings of this variant
    /// only). Bindings must be group 0, numbered 0, 1, 2, ... with the uniform block first.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn of(text: &str) -> Result<Contract, String> {
        use wgpu::naga;
        let module = naga::front::wgsl::parse_str(text).map_err(|e| e.emit_to_string(text))?;
        let mut bound: Vec<_> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| Some((v.binding?, v.name.clone().unwrap_or_default(), v)))
            .collect();
        bound.sort_by_key(|(b, ..)| b.binding);
        for (i, (b, name, _)) in bound.iter().enumerate() {
            if b.group != 0 || b.binding != i as u32 {
                return Err(format!(
                    "'{name}' is @group({}) @binding({}), expected 0 and {i}",
                    b.group, b.binding
                ));
            }
        }
        let Some((_, _, uniform)) = bound.first().filter(|(_, _, v)| v.space == naga::AddressSpace::Uniform)
        else {
            return Err("binding 0 is not the uniform block".into());
        };
        Ok(Contract {
            uniform_bytes: module.types[uniform.ty].inner.size(module.to_ctx()),
            storage: bound[1..].iter().map(|(_, name, _)| name.clone()).collect(),
        })
    }

    /// Checks a dispatch against the contract: its uniform block's size and its buffers'
    /// names, in binding order. The error names the first difference.
    pub fn check(&self, uniform_bytes: usize, names: &[&str]) -> Result<(), String> {
        if uniform_bytes != self.uniform_bytes as usize {
            return Err(format!(
                "the uniform block is {uniform_bytes} bytes on the Rust side, {} in the shader",
                self.uniform_bytes
            ));
        }
        if names.len() != self.storage.len() || names.iter().zip(&self.storage).any(|(a, b)| a != b) {
            return Err(format!(
                "the buffers are bound as {names:?}, the shader declares {:?} at bindings 1..",
                self.storage
            ));
        }
        Ok(())
    }
}

/// The names `#if NAME` tests in a source's own text (not its includes').
pub fn conditions(src: &str) -> Vec<&str> {
    let mut names: Vec<&str> =
        src.lines().filter_map(|line| line.trim_start().strip_prefix("#if ")).map(str::trim).collect();
    names.sort();
    names.dedup();
    names
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
            Contract::of(&text).unwrap_or_else(|e| panic!("{name} {defines:?}: {e}"));
            count += 1;
        }
        assert!(count >= 10, "only {count} variants");
    }

    /// Which globals each entry point uses, as naga reports them (what wgpu derives a
    /// pipeline's layout from).
    fn entry_uses(text: &str) -> Vec<Vec<String>> {
        let module =
            naga::front::wgsl::parse_str(text).unwrap_or_else(|e| panic!("{}", e.emit_to_string(text)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{e:?}"));
        (0..module.entry_points.len())
            .map(|i| {
                let uses = info.get_entry_point(i);
                module.global_variables.iter().map(|(h, _)| format!("{:?}", uses[h])).collect()
            })
            .collect()
    }

    /// The empty-kernel variant of every kernel validates, returns before its first statement,
    /// and uses the same bindings the same way (so its pipeline layout and bind groups are
    /// those of the real kernel).
    #[test]
    fn empty_kernels_keep_every_binding() {
        let mut count = 0;
        for (name, defines) in crate::ops::all_variants() {
            let text = preprocess(source(name), &defines);
            let empty = empty_bodies(&text);
            let entries = text.lines().filter(|l| l.trim_start().starts_with("@compute")).count();
            assert_eq!(
                empty.matches("if (KEEL_EMPTY_KERNEL) { return; }").count(),
                entries,
                "{name} {defines:?}"
            );
            assert_eq!(entry_uses(&empty), entry_uses(&text), "{name} {defines:?}");
            count += 1;
        }
        assert!(count >= 10, "only {count} variants");
    }

    /// Every variant, poisoned, still validates and keeps its bindings; each entry point that
    /// has workgroup memory gets the prologue.
    #[test]
    fn every_variant_takes_the_workgroup_poison() {
        for (name, defines) in crate::ops::all_variants() {
            let text = preprocess(source(name), &defines);
            let poisoned =
                poisoned_workgroup_memory(&text).unwrap_or_else(|e| panic!("{name} {defines:?}: {e}"));
            let entries = text.lines().filter(|l| l.trim_start().starts_with("@compute")).count();
            assert_eq!(poisoned.matches("let keel_poison = ").count(), entries, "{name} {defines:?}");
            let uses = |t: &str| {
                entry_uses(t)
                    .into_iter()
                    .map(|e| e.into_iter().filter(|u| u != "GlobalUse(0x0)").count())
                    .collect::<Vec<_>>()
            };
            assert_eq!(uses(&poisoned), uses(&text), "{name} {defines:?}");
        }
    }

    /// A kernel that reads a workgroup slot it never wrote reads NaN under the poison (and
    /// 0 without it, on lavapipe's zeroed memory), so the CPU-reference tests catch it.
    #[test]
    fn poison_shows_a_read_before_write() {
        let text = "@group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
                    var<workgroup> slots: array<f32, 64>;\n\
                    @compute @workgroup_size(64)\n\
                    fn main(@builtin(local_invocation_index) lid: u32) {\n\
                    \x20   if (lid < 32u) { slots[lid] = 1.0; }\n\
                    \x20   workgroupBarrier();\n\
                    \x20   out[lid] = slots[lid];\n\
                    }\n";
        let gpu = crate::ops::test_util::gpu();
        let run = |wgsl: &str| {
            let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: None,
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            });
            let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: None,
                compilation_options: Default::default(),
                cache: None,
            });
            let out = gpu.upload_f32("out", &[64], &[7.0; 64]).unwrap();
            let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[wgpu::BindGroupEntry { binding: 0, resource: out.buf.as_entire_binding() }],
            });
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
            gpu.queue.submit([encoder.finish()]);
            gpu.read_f32(&out).unwrap()
        };
        let plain = run(text);
        let poisoned = run(&poisoned_workgroup_memory(text).unwrap());
        assert_eq!(&plain[..32], &[1.0; 32]);
        assert_eq!(&poisoned[..32], &[1.0; 32]);
        assert!(poisoned[32..].iter().all(|v| v.is_nan()), "{:?}", &poisoned[32..]);
        assert!(plain[32..].iter().all(|v| !v.is_nan()));
    }

    /// An `#if` on a name that no variant of its shader defines is a typo (it would be false
    /// for ever), and so is a define its shader never mentions.
    #[test]
    fn every_condition_is_a_define_and_every_define_is_used() {
        let variants = crate::ops::all_variants();
        // The defines of the variants of every family that is, or includes, `file`.
        let defined_for = |file: &str| -> Vec<&str> {
            let includes =
                |family: &str| source(family).lines().any(|l| l.trim() == format!("#include {file}"));
            variants
                .iter()
                .filter(|(n, _)| *n == file || includes(n))
                .flat_map(|(_, d)| d.iter().map(|(k, _)| *k))
                .collect()
        };
        for (file, src) in SOURCES {
            let defined = defined_for(file);
            for name in conditions(src) {
                assert!(defined.contains(&name), "{file}.wgsl: #if {name}, which no variant defines");
            }
        }
        // Kernels are the sources no other source includes.
        let included = |name: &str| {
            SOURCES.iter().any(|(_, s)| s.lines().any(|l| l.trim() == format!("#include {name}")))
        };
        for (family, src) in SOURCES.iter().filter(|(n, _)| !included(n)) {
            assert!(variants.iter().any(|(n, _)| n == family), "{family}: no variant in ops::all_variants");
            // The source with its includes pasted in, `#if` lines kept.
            let text: String = src
                .lines()
                .map(|l| l.trim_start().strip_prefix("#include ").map_or(l, |name| source(name.trim())))
                .collect::<Vec<_>>()
                .join("\n");
            for (_, defines) in variants.iter().filter(|(n, _)| n == family) {
                for (name, _) in defines {
                    let used = text.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == *name);
                    assert!(used, "{family}: define {name} is never used");
                }
            }
        }
    }

    /// A dispatch that binds two buffers the wrong way round, or passes a uniform block of the
    /// wrong size, is refused, naming what the shader declares.
    #[test]
    fn the_contract_catches_a_swapped_binding() {
        let contract = Contract::of(&preprocess(source("norm"), &[("LAYER", 0)])).unwrap();
        assert_eq!(contract.storage, ["x", "w", "out", "stats"]);
        assert_eq!(contract.uniform_bytes, 32);
        assert_eq!(contract.check(32, &["x", "w", "out", "stats"]), Ok(()));
        let swapped = contract.check(32, &["w", "x", "out", "stats"]).unwrap_err();
        assert!(
            swapped.contains(r#"["w", "x", "out", "stats"]"#)
                && swapped.contains(r#"["x", "w", "out", "stats"]"#)
        );
        assert!(contract.check(32, &["x", "w", "out"]).is_err());
        assert!(contract.check(20, &["x", "w", "out", "stats"]).unwrap_err().contains("20 bytes"));
    }
}
