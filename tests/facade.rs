//! The library through its crate root only, as an embedding program sees it: a model loaded,
//! uploaded and generated from, and each kind of `keel::Error` its functions return.

use keel::{Error, GenerateOptions, GpuModel};

#[test]
fn generates_through_the_root_and_returns_typed_errors() {
    let Some(dir) = keel::testing::model("stories260k") else { return };
    let gpu = keel::Gpu::shared().unwrap();
    let host = keel::load(&dir).unwrap();
    let model = GpuModel::upload(gpu, &host).unwrap();
    assert!(std::ptr::eq(model.gpu(), gpu));
    let prompt = host.tokenizer.encode("Once upon a time").unwrap();

    // for_model: the model's EOS and sampling defaults, 128 new tokens, no modulation.
    let mut opts = GenerateOptions::for_model(&host);
    assert_eq!((opts.eos.clone(), opts.max_tokens, opts.lcm.is_none()), (host.config.eos.clone(), 128, true));
    opts.max_tokens = 8;
    opts.sampler.temperature = 0.0;
    let mut streamed = Vec::new();
    let ids = keel::generate(&model, &prompt, &opts, |id| {
        streamed.push(id);
        Ok(())
    })
    .unwrap();
    // The engine's own entry point gives the same greedy tokens.
    let inner = keel::generate::generate(gpu, &model, &prompt, &opts, &mut |_| Ok(())).unwrap();
    assert_eq!((ids.len(), &streamed), (8, &inner));

    let long = GenerateOptions { max_tokens: 600, ..opts.clone() };
    match keel::generate(&model, &prompt, &long, |_| Ok(())) {
        Err(Error::ContextExceeded { prompt: p, max_tokens: 600, context: 512 }) => {
            assert_eq!(p, prompt.len())
        }
        other => panic!("expected ContextExceeded, got {other:?}"),
    }
    let mut hot = opts.clone();
    hot.sampler.top_p = 2.0;
    match keel::generate(&model, &prompt, &hot, |_| Ok(())) {
        Err(e @ Error::InvalidArgument { field: "top_p", .. }) => {
            assert_eq!(e.to_string(), "top_p must be in (0, 1], got 2")
        }
        other => panic!("expected InvalidArgument for top_p, got {other:?}"),
    }

    match keel::load(dir.join("no-such-folder")) {
        Err(Error::Load(text)) => assert!(text.contains("no-such-folder"), "{text}"),
        other => panic!("expected Load, got {:?}", other.map(|_| ())),
    }
}
