//! GPU limits and a lost device, on whatever adapter is present (lavapipe in CI). The
//! adapter's real limits are far above the fixtures' needs, so this process lowers the
//! largest binding Keel uses with `KEEL_MAX_BINDING_BYTES` (its own process: the setting
//! holds for every test here). The command-line side of the same limits is in
//! tests/malformed.rs.

use keel::gpu::{AdapterChoice, DType, Gpu, Step};
use keel::model::{self, GpuModel};

/// Exactly stories260k's largest tensor: the embedding, [512, 64] f32.
const LIMIT: u64 = 512 * 64 * 4;

fn gpu() -> &'static Gpu {
    // Before the shared device opens (every test calls this first; the value is the same).
    std::env::set_var("KEEL_MAX_BINDING_BYTES", LIMIT.to_string());
    let gpu = Gpu::shared().unwrap();
    assert_eq!(gpu.limits.max_storage_buffer_binding_size, LIMIT);
    gpu
}

#[test]
fn kv_cache_over_the_binding_limit_says_what_fits() {
    let gpu = gpu();
    let Some(dir) = keel::testing::model("stories260k") else { return };
    let host = model::load(&dir).unwrap();
    let m = GpuModel::upload(gpu, &host).unwrap();
    // A position of one sequence takes 4 kv heads x 8 x 4 bytes = 128 bytes per layer, so
    // 1024 positions fit in one binding; 4 sequences of 512 do not.
    let err = m.new_cache(gpu, 4, 512).err().expect("refused").to_string();
    assert_eq!(
        err,
        "a KV cache of 4 x 512 positions needs 262144 bytes per layer, over this adapter's \
         max_storage_buffer_binding_size of 131072 bytes: at most 256 positions fit"
    );
    let cache = m.new_cache(gpu, 4, 256).unwrap();
    assert_eq!(cache.k[0].bytes(), LIMIT);
    gpu.check_lost().unwrap();
}

#[test]
fn tensor_over_the_binding_limit_says_how_many_rows_fit() {
    let gpu = gpu();
    let err = gpu.zeros("logits", &[100, 512], DType::F32).expect_err("refused");
    // The library's kind, with the sizes, for a program to act on.
    match keel::Error::from(gpu.zeros("logits", &[100, 512], DType::F32).expect_err("refused")) {
        keel::Error::DoesNotFit { bytes: 204800, limit: LIMIT, rows_that_fit: 64, .. } => {}
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "tensor 'logits' of shape [100, 512] needs 204800 bytes in one binding, over this adapter's \
         max_storage_buffer_binding_size of 131072 bytes (at most 64 rows of it fit)"
    );
    assert!(gpu.zeros("logits", &[64, 512], DType::F32).is_ok());
}

/// A device of its own (the shared one must live on), destroyed as a driver reset would:
/// every later use is an error that says the device was lost, and nothing panics.
#[test]
fn lost_device_is_an_error_not_a_panic() {
    gpu();
    let lost = pollster::block_on(Gpu::new(&AdapterChoice::from_flag_or_env(None))).unwrap();
    let t = lost.upload_f32("x", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(lost.read_f32(&t).unwrap(), [1.0, 2.0, 3.0, 4.0]);
    lost.device.destroy();
    let _ = lost.device.poll(wgpu::PollType::wait_indefinitely());
    let msg = lost.check_lost().unwrap_err().to_string();
    assert!(msg.starts_with("the GPU device was lost ("), "{msg}");
    let mut step = Step::new(&lost);
    step.clear(&t);
    let msg = step.submit().unwrap_err().to_string();
    assert!(msg.starts_with("the GPU device was lost"), "{msg}");
    let msg = lost.read_f32(&t).unwrap_err().to_string();
    assert!(msg.contains("lost"), "{msg}");
}
