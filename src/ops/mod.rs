//! One file per op: shape checks, pipeline choice and dispatch (recorded into a
//! [`Step`](crate::gpu::Step)), and tests against the CPU reference in [`crate::cpu`].

/// The storage bindings of a dispatch, named as the shader names them: `bind![x, w, out]`
/// binds the variables `x`, `w`, `out` to the shader's `x`, `w`, `out`; `bind![x = &a.t]` binds
/// an expression (see [`Step::dispatch`](crate::gpu::Step::dispatch), which checks them).
macro_rules! bind {
    (@one $name:ident = $e:expr) => { (stringify!($name), $e) };
    (@one $name:ident) => { (stringify!($name), $name) };
    ($($name:ident $(= $e:expr)?),* $(,)?) => { [$(bind!(@one $name $(= $e)?)),*] };
}

pub mod act;
pub mod align;
pub mod attention;
pub mod cgfm;
pub mod dequant;
pub mod draw;
pub mod embed;
pub mod hgc;
pub mod lcm;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod rope;
pub mod softcap;
pub mod stats;
pub mod trace;
pub mod xent;

use crate::gpu::shader::Define;

/// Every (shader, defines) variant the ops can ask for; the naga test validates each.
pub fn all_variants() -> Vec<(&'static str, Vec<Define>)> {
    [
        embed::variants(),
        norm::variants(),
        matmul::variants(),
        rope::variants(),
        attention::variants(),
        cgfm::variants(),
        act::variants(),
        stats::variants(),
        draw::variants(),
        dequant::variants(),
        lcm::variants(),
        xent::variants(),
        softcap::variants(),
        optim::variants(),
        hgc::variants(),
        align::variants(),
        trace::variants(),
    ]
    .concat()
}

/// Number of workgroups for `n` items at `per_group` items each.
pub(crate) fn groups(n: usize, per_group: usize) -> [u32; 3] {
    crate::gpu::groups_for(n.div_ceil(per_group) as u32)
}

#[cfg(test)]
pub(crate) mod test_util {
    pub use crate::cpu::test_data::{assert_close, rand_vec};

    /// The one device all tests in this process share.
    pub fn gpu() -> &'static crate::gpu::Gpu {
        crate::gpu::Gpu::shared().expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)")
    }

    /// A small Llama (2 blocks, 4 query heads over 2 KV heads, 64 positions) of the given
    /// vocabulary, hidden and MLP widths, its LM head tied to the embedding or not.
    pub fn small_llama(
        vocab: usize,
        hidden: usize,
        intermediate: usize,
        tied: bool,
    ) -> crate::model::ModelConfig {
        let json = format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "vocab_size": {vocab},
            "hidden_size": {hidden}, "intermediate_size": {intermediate}, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000, "max_position_embeddings": 64, "tie_word_embeddings": {tied}}}"#
        );
        crate::model::load::parse_config(json.as_bytes(), "test config").unwrap()
    }

    /// A device of its own whose largest binding is `bytes` (one per size, shared by the
    /// tests asking for it): what splits a small model's weights into row shards, without
    /// touching the process's environment.
    pub fn gpu_with_binding(bytes: u64) -> &'static crate::gpu::Gpu {
        use std::collections::HashMap;
        use std::sync::Mutex;
        static DEVICES: Mutex<Option<HashMap<u64, &'static crate::gpu::Gpu>>> = Mutex::new(None);
        let mut devices = DEVICES.lock().unwrap();
        devices.get_or_insert_with(HashMap::new).entry(bytes).or_insert_with(|| {
            let choice = crate::gpu::AdapterChoice::from_flag_or_env(None);
            let gpu = pollster::block_on(crate::gpu::Gpu::with_max_binding(&choice, Some(bytes)));
            Box::leak(Box::new(gpu.expect("a GPU adapter")))
        })
    }
}
