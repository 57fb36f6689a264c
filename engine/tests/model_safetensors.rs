//! Safetensors (HF layout) loading: the dequantized GGUF exported to the HF layout (Q/K rows
//! permuted back) loads to the same logits, bit for bit, as the GGUF on the float kernels.

mod common;

use specd_engine::device::Device;
use specd_engine::model::{export_hf_safetensors, load_model, LoadOptions};
use specd_engine::pipeline::encode_prompt;

#[test]
fn hf_export_loads_to_identical_logits() {
    let path = common::draft().path;
    let (gguf, tok) = load_model(&path, LoadOptions::exact_on(Device::Cpu)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_hf_safetensors(&gguf, &tok, dir.path()).unwrap();
    let (hf, hf_tok) = load_model(dir.path(), LoadOptions::default()).unwrap();
    assert_eq!(hf.config, gguf.config);
    assert_eq!(
        hf_tok.fingerprint(),
        tok.fingerprint(),
        "tokenizer.json round trip changed the vocabulary"
    );
    let prompt = encode_prompt(&tok, "Explain photosynthesis to a child.", true).unwrap();
    assert_eq!(
        encode_prompt(&hf_tok, "Explain photosynthesis to a child.", true).unwrap(),
        prompt
    );
    let (mut c1, mut c2) = (gguf.new_cache(), hf.new_cache());
    let a = gguf.forward(&mut c1, &prompt, 0).unwrap();
    let b = hf.forward(&mut c2, &prompt, 0).unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "logits differ between GGUF and safetensors"
    );
    // And the float model agrees with the quantized one to quantization error.
    let (q, _) = load_model(&path, LoadOptions::default()).unwrap();
    let mut c3 = q.new_cache();
    let l = q.forward(&mut c3, &prompt, prompt.len() - 1).unwrap();
    let last = &a[(prompt.len() - 1) * hf.config.vocab_size..];
    let max_diff = l
        .iter()
        .zip(last)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff < 2.0,
        "quantized vs float logits differ by {max_diff}"
    );
}

#[test]
fn bad_safetensors_dirs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let err = format!(
        "{:#}",
        load_model(dir.path(), LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"hidden_size":64,"intermediate_size":128,"num_attention_heads":2,"num_hidden_layers":1,"vocab_size":10}"#,
    )
    .unwrap();
    let err = format!(
        "{:#}",
        load_model(dir.path(), LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(err.contains("safetensors"), "{err}");
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let err = format!(
        "{:#}",
        load_model(dir.path(), LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(err.contains("model.safetensors"), "{err}");
}
