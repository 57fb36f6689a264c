//! Same-tokenizer pairs whose embedding tables are padded to different sizes (Qwen2.5: 152064 rows
//! for 7B, 151936 for 0.5B, 151665 tokens): the pair is accepted, padding ids are never drafted or
//! committed, and speculative output still equals target-only output.
//!
//! The padded model is the real target with rows appended to its (tied) embedding, named
//! `[PAD…]` and typed unused as llama.cpp's converter writes them. Most appended rows are copies of
//! the rows of the tokens the target writes, with 4× their scale: unmasked, they would win every
//! argmax (checked by the negative control, the same rows typed as ordinary tokens).

mod common;

use std::path::Path;

use specd_engine::gguf::{write_gguf, GgufFile, TensorOut, Value};
use specd_engine::pipeline::{check_pair, generate, LoadedModel, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;

const PROMPT: &str = "Janet has 3 apples and buys 5 more. How many apples does she have?";

fn request(mode: Mode) -> Request {
    Request {
        prompt: Prompt::user(PROMPT),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens: 48,
        sampling: SamplingParams::default(),
        gamma: GammaPolicy::Fixed(4),
        mode,
        drafter: DrafterSpec::Model,
        draft_sampling: DraftSampling::Greedy,
        policy: Default::default(),
    }
}

/// Writes `src` (a Q8_0 GGUF with a tied embedding) with `pad` rows appended to its embedding:
/// copies of the rows of `clones` (scale ×4), then zeros; the new tokens are `[PAD…]`, typed
/// unused (5) when `typed_unused`, else normal (1).
fn padded_copy(src: &Path, out: &Path, clones: &[u32], pad: usize, typed_unused: bool) {
    let f = GgufFile::open(src).unwrap();
    let mut metadata = f.metadata.clone();
    let Some(Value::Array(tokens)) = metadata.get_mut("tokenizer.ggml.tokens") else {
        panic!("no token list")
    };
    let n = tokens.len();
    tokens.extend((n..n + pad).map(|i| Value::String(format!("[PAD{i}]"))));
    let Some(Value::Array(types)) = metadata.get_mut("tokenizer.ggml.token_type") else {
        panic!("no token types")
    };
    let pad_type = if typed_unused { 5 } else { 1 };
    types.extend((0..pad).map(|_| Value::I32(pad_type)));
    let tensors: Vec<TensorOut> = f
        .tensors
        .iter()
        .map(|t| {
            let mut data = f.data(t).to_vec();
            let mut dims = t.dims.clone();
            if t.name == "token_embd.weight" {
                assert_eq!(t.ggml_type.block_bytes(), 34, "a Q8_0 embedding");
                let row = data.len() / dims[1] as usize;
                for i in 0..pad {
                    match clones.get(i) {
                        Some(&id) => {
                            let mut r = data[id as usize * row..(id as usize + 1) * row].to_vec();
                            // Each 34-byte block starts with its f16 scale: +2 on the exponent is ×4.
                            for b in r.chunks_mut(34) {
                                let s = u16::from_le_bytes([b[0], b[1]]) + 0x0800;
                                b[..2].copy_from_slice(&s.to_le_bytes());
                            }
                            data.extend_from_slice(&r);
                        }
                        None => data.extend(std::iter::repeat_n(0u8, row)),
                    }
                }
                dims[1] += pad as u64;
            }
            TensorOut {
                name: t.name.clone(),
                dims,
                ggml_type: t.ggml_type,
                data,
            }
        })
        .collect();
    assert!(f.tensor("output.weight").is_none(), "a tied embedding");
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    write_gguf(&mut w, &metadata, &tensors).unwrap();
}

fn load(path: &Path) -> LoadedModel {
    common::load(path.to_str().unwrap())
}

#[test]
fn padded_pairs_are_accepted_and_padding_is_never_drafted_or_committed() {
    let (t, d) = (common::target(), common::draft());
    let base = generate(&t, None, &request(Mode::TargetOnly), |_| {}).unwrap();
    let real = t.tokenizer.vocab_size();
    assert!(base.token_ids.iter().all(|&id| (id as usize) < real));
    let mut clones = base.token_ids.clone();
    clones.sort_unstable();
    clones.dedup();

    let dir = tempfile::tempdir().unwrap();
    let src = t.path.clone();
    let padded = dir.path().join("padded.gguf");
    padded_copy(&src, &padded, &clones, 128, true);
    let p = load(&padded);
    assert_eq!(p.model.config.vocab_size, real + 128);
    assert_eq!(p.tokenizer.defined_vocab(), real);
    assert_eq!(p.model.config.padding_from, Some(real));
    assert_eq!(
        p.tokenizer.fingerprint(),
        t.tokenizer.fingerprint(),
        "the fingerprint covers the defined tokens only"
    );
    // Both orders of the pair are accepted (the check refused different logit counts before).
    check_pair(&p, &d).unwrap();
    check_pair(&t, &p).unwrap();

    // Target-only on the padded model: the same tokens, none of them padding.
    let alone = generate(&p, None, &request(Mode::TargetOnly), |_| {}).unwrap();
    assert_eq!(alone.token_ids, base.token_ids);
    // Speculative, padded target with the unpadded draft, and the unpadded target with the padded
    // model as its draft: exact, so equal to target-only.
    for (target, draft) in [(&p, &d), (&t, &p)] {
        let out = generate(target, Some(draft), &request(Mode::Speculative), |_| {}).unwrap();
        assert_eq!(
            out.token_ids, base.token_ids,
            "target {} draft {}",
            target.name, draft.name
        );
        assert!(out.stats.drafted_tokens > 0);
    }

    // Negative control: the same rows typed as ordinary tokens are not masked, and win.
    let unmasked = dir.path().join("unmasked.gguf");
    padded_copy(&src, &unmasked, &clones, 128, false);
    let u = load(&unmasked);
    assert_eq!(u.model.config.padding_from, None);
    assert_ne!(u.tokenizer.fingerprint(), t.tokenizer.fingerprint());
    assert!(check_pair(&u, &d).is_err(), "another vocabulary is refused");
    let wins = generate(&u, None, &request(Mode::TargetOnly), |_| {}).unwrap();
    assert!(
        wins.token_ids.iter().any(|&id| id as usize >= real),
        "the appended rows never win unmasked: the test could not catch a missing mask"
    );
}
