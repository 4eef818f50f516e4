//! seg-model: exact gradients of the replaced ops, the reference architecture, PyTorch
//! equivalence, checkpoints, and that the network can learn.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Optimizer;
use ct_io::config::Section;
use seg_model::ops::{
    bce_with_logits, conv1x1, conv3x3, conv3x3_composed, conv3x3_concat, max_pool2x2,
    upsample_bilinear2x,
};
use seg_model::{Model, ModelConfig, Upsampling, parse_device};

thread_local! {
    /// Draws made so far on this thread: each test runs on its own thread, so its draws are the
    /// same on every run.
    static DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Normal draws of mean 0 and standard deviation `sd`, seeded (candle's CPU `randn` cannot be):
/// a test that passes, passes every time.
fn randn(
    dtype: DType,
    sd: f64,
    shape: impl Into<candle_core::Shape>,
) -> candle_core::Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let shape = shape.into();
    let seed = DRAWS.with(|d| {
        let n = d.get();
        d.set(n + 1);
        n
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5EED ^ seed);
    let values: Vec<f64> = (0..shape.elem_count())
        .map(|_| {
            // Box–Muller.
            let u: f64 = 1.0 - rng.random::<f64>();
            let t: f64 = rng.random();
            sd * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * t).cos()
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Compares the autograd gradient of sum(op(x) * w) with central differences, in f64: at every
/// element, or at 65 spread evenly over a large tensor (first and last included). A probe whose
/// two steps leave different outputs at exactly zero has crossed a ReLU's kink, where the
/// difference quotient is not the derivative: it is left out (and at most 1 in 20 may be).
fn check_gradient(op: impl Fn(&Tensor) -> candle_core::Result<Tensor>, x: Tensor) {
    let device = Device::Cpu;
    let x = Var::from_tensor(&x).unwrap();
    let out = op(x.as_tensor()).unwrap();
    let w = randn(DType::F64, 1.0, out.shape()).unwrap();
    let loss_and_zeros = |t: &Tensor| -> (f64, Vec<bool>) {
        let y = op(t).unwrap();
        let values: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
        let loss = (y * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        (loss, values.iter().map(|v| *v == 0.0).collect())
    };
    let grads = (out * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic: Vec<f64> = grads
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-6;
    let n = base.len();
    let probes: Vec<usize> = if n <= 2048 {
        (0..n).collect()
    } else {
        (0..=64).map(|k| k * (n - 1) / 64).collect()
    };
    let mut across_kinks = 0;
    for &i in &probes {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let at = |v: Vec<f64>| Tensor::from_vec(v, x.shape(), &device).unwrap();
        let ((above, zeros_above), (below, zeros_below)) =
            (loss_and_zeros(&at(plus)), loss_and_zeros(&at(minus)));
        if zeros_above != zeros_below {
            across_kinks += 1;
            continue;
        }
        let numeric = (above - below) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-5 * (1.0 + numeric.abs()),
            "element {i}: autograd {} vs finite differences {numeric}",
            analytic[i]
        );
    }
    assert!(
        across_kinks * 20 <= probes.len(),
        "{across_kinks} of {} probes crossed a kink",
        probes.len()
    );
}

#[test]
fn max_pool_routes_the_whole_gradient_to_each_maximum() {
    let x = randn(DType::F64, 1.0, (2, 3, 4, 6)).unwrap();
    check_gradient(max_pool2x2, x);
    // [[1, 2], [3, 4]]: the 4 gets the gradient 1 (candle's own max_pool2d gives 0.25).
    let x =
        Var::from_tensor(&Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap()).unwrap();
    let g = max_pool2x2(x.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g, [0.0, 0.0, 0.0, 1.0]);
    // Ties: the first maximum in reading order takes it, as in PyTorch.
    let x =
        Var::from_tensor(&Tensor::new(&[[[[0f32, 2.], [2., 1.]]]], &Device::Cpu).unwrap()).unwrap();
    let g = max_pool2x2(x.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g, [0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn bilinear_upsampling_has_exact_gradients_and_matches_pytorch() {
    // Odd sizes, and a single row or column (both neighbours are the edge).
    for shape in [(1, 2, 3, 5), (2, 1, 1, 4), (1, 2, 4, 1)] {
        check_gradient(upsample_bilinear2x, randn(DType::F64, 1.0, shape).unwrap());
    }
    let io = candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu).unwrap();
    let ours = upsample_bilinear2x(&io["upsample_input"]).unwrap();
    assert_eq!(ours.dims(), [1, 2, 6, 10]);
    assert!(max_abs_diff(&ours, &io["upsample_output"]) < 1e-6);
}

#[test]
fn bce_with_logits_is_exact_and_finite_for_huge_logits() {
    let logits = randn(DType::F64, 3.0, (2, 1, 3, 3)).unwrap();
    let targets = randn(DType::F64, 1.0, (2, 1, 3, 3))
        .unwrap()
        .ge(0.0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    check_gradient(|x| bce_with_logits(x, &targets), logits);
    let logits =
        Var::from_tensor(&Tensor::new(&[-100f32, -50., 0., 50., 100.], &Device::Cpu).unwrap())
            .unwrap();
    let targets = Tensor::new(&[1f32, 0., 1., 0., 1.], &Device::Cpu).unwrap();
    let loss = bce_with_logits(logits.as_tensor(), &targets).unwrap();
    let value = loss.to_scalar::<f32>().unwrap();
    // (100 + 0 + ln 2 + 50 + 0) / 5
    assert!((value - (150.0 + 2f32.ln()) / 5.0).abs() < 1e-4, "{value}");
    let grad: Vec<f32> = loss
        .backward()
        .unwrap()
        .get(&logits)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(grad.iter().all(|g| g.is_finite()));
    assert!(
        (grad[0] + 0.2).abs() < 1e-6 && (grad[3] - 0.2).abs() < 1e-6,
        "{grad:?}"
    );
}

#[test]
fn the_default_model_is_the_reference_network() {
    let model = Model::new(&ModelConfig::default(), &Device::Cpu).unwrap();
    assert_eq!(model.parameter_count(), 7_781_761);
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"layer1.step.0.weight".to_string()));
    assert!(names.contains(&"layer7.step.2.bias".to_string()));
    assert!(names.contains(&"layer8.weight".to_string()));
    assert_eq!(names.len(), 7 * 4 + 2);
}

#[test]
fn imported_pytorch_weights_give_pytorch_outputs() {
    let io = candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "reference_w4.pt",
        "reference_w4.ckpt",
        "reference_w4.safetensors",
    ] {
        let out = dir.path().join(file);
        let info = seg_model::import::import_torch(&fixture(file), &out).unwrap();
        assert_eq!(
            (info.model.width, info.model.depth, info.model.in_channels),
            (4, 4, 1)
        );
        assert_eq!(info.parameters, 30_601);
        let (model, _) = Model::load(&out, &Device::Cpu).unwrap();
        let y = model.unet.forward(&io["input"]).unwrap();
        let diff = max_abs_diff(&y, &io["output"]);
        assert!(diff < 1e-4, "{file}: differs from PyTorch by {diff}");
    }
}

#[test]
fn the_binary_imports_and_describes_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let bin = env!("CARGO_BIN_EXE_seg-model");
    let run = std::process::Command::new(bin)
        .args(["import-torch", "--weights"])
        .arg(fixture("reference_w4.ckpt"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let info = std::process::Command::new(bin)
        .arg("info")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("width 4, depth 4") && text.contains("parameters: 30601"),
        "{text}"
    );
    let missing = std::process::Command::new(bin)
        .arg("info")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no checkpoint here"));
}

/// Every parameter's bits, by name.
fn weights_of(model: &Model) -> Vec<(String, Vec<u32>)> {
    model
        .named_vars()
        .into_iter()
        .map(|(name, v)| {
            let values: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            (name, values.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

#[test]
fn checkpoints_round_trip_bit_exactly_and_refuse_mismatches() {
    let config = ModelConfig {
        width: 4,
        depth: 3,
        init_seed: 7,
        ..ModelConfig::default()
    };
    let model = Model::new(&config, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("best");
    let preprocess = serde_json::json!({"size": 64});
    // The second save replaces the first in place.
    for _ in 0..2 {
        let extra = serde_json::json!({"epoch": 2});
        model.save(&ckpt, Some(preprocess.clone()), extra).unwrap();
    }
    let (loaded, info) = Model::load(&ckpt, &Device::Cpu).unwrap();
    assert_eq!(info.preprocess, Some(preprocess));
    assert_eq!(info.model, config);
    for ((na, a), (nb, b)) in model.named_vars().iter().zip(loaded.named_vars()) {
        assert_eq!(na, &nb);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "no temporary or previous folder left: {names:?}"
    );

    // A save that crashed mid-swap leaves only `best.previous`: loading falls back to it, and the
    // next save puts a new `best` in place and removes it.
    let previous = dir.path().join("best.previous");
    std::fs::rename(&ckpt, &previous).unwrap();
    let (fallback, _, folder) = Model::load_from(&ckpt, &Device::Cpu).unwrap();
    assert_eq!(folder, previous);
    assert_eq!(weights_of(&fallback), weights_of(&model));
    let other = Model::new(
        &ModelConfig {
            init_seed: 8,
            ..config.clone()
        },
        &Device::Cpu,
    )
    .unwrap();
    other.save(&ckpt, None, serde_json::Value::Null).unwrap();
    let (loaded, _, folder) = Model::load_from(&ckpt, &Device::Cpu).unwrap();
    assert_eq!(folder, ckpt);
    assert_eq!(weights_of(&loaded), weights_of(&other));
    assert!(!previous.exists());

    // A sidecar that does not match the weights.
    let sidecar = ckpt.join("checkpoint.json");
    let text = std::fs::read_to_string(&sidecar).unwrap();
    std::fs::write(&sidecar, text.replace("\"width\": 4", "\"width\": 8")).unwrap();
    let err = format!("{:#}", Model::load(&ckpt, &Device::Cpu).err().unwrap());
    assert!(
        err.contains("model.safetensors") && err.contains("shape"),
        "{err}"
    );
    std::fs::write(&sidecar, &text).unwrap();
    // A weights file with a tensor missing.
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("layer2.step.2.bias");
    candle_core::safetensors::save(&tensors, ckpt.join("model.safetensors")).unwrap();
    let err = format!("{:#}", Model::load(&ckpt, &Device::Cpu).err().unwrap());
    assert!(err.contains("missing tensors layer2.step.2.bias"), "{err}");
}

#[test]
fn initialisation_is_deterministic_per_seed() {
    let weights = |seed| -> Vec<f32> {
        let model = Model::new(
            &ModelConfig {
                width: 2,
                depth: 2,
                init_seed: seed,
                ..ModelConfig::default()
            },
            &Device::Cpu,
        )
        .unwrap();
        model
            .named_vars()
            .iter()
            .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    assert_eq!(weights(1), weights(1));
    assert_ne!(weights(1), weights(2));
    // PyTorch's bound for layer1.step.0 (fan_in 9): 1/3.
    assert!(weights(1).iter().all(|v| v.abs() <= 1.0));

    // With an initial probability, the output starts there everywhere (all else as before).
    let config = ModelConfig {
        width: 2,
        depth: 2,
        initial_probability: Some(0.01),
        ..ModelConfig::default()
    };
    let model = Model::new(&config, &Device::Cpu).unwrap();
    let bias = model
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "layer4.bias")
        .unwrap()
        .1;
    let logit = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((logit - (0.01f32 / 0.99).ln()).abs() < 1e-6);
    let others: Vec<f32> = model
        .named_vars()
        .iter()
        .filter(|(n, _)| n != "layer4.bias")
        .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    let plain: Vec<f32> = Model::new(
        &ModelConfig {
            initial_probability: None,
            ..config
        },
        &Device::Cpu,
    )
    .unwrap()
    .named_vars()
    .iter()
    .filter(|(n, _)| n != "layer4.bias")
    .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    .collect();
    assert_eq!(others, plain);
    assert!(
        ModelConfig {
            initial_probability: Some(1.0),
            ..ModelConfig::default()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn the_variants_build_and_keep_the_output_shape() {
    for (upsampling, batch_norm) in [
        (Upsampling::Transposed, false),
        (Upsampling::Bilinear, true),
    ] {
        let config = ModelConfig {
            in_channels: 3,
            width: 4,
            depth: 3,
            upsampling,
            batch_norm,
            init_seed: 0,
            initial_probability: None,
        };
        let model = Model::new(&config, &Device::Cpu).unwrap();
        let x = randn(DType::F32, 1.0, (2, 3, 16, 16)).unwrap();
        assert_eq!(
            model.unet.forward_t(&x, true).unwrap().dims(),
            [2, 1, 16, 16]
        );
        assert_eq!(model.unet.forward(&x).unwrap().dims(), [2, 1, 16, 16]);
    }
    let model = Model::new(
        &ModelConfig {
            width: 2,
            depth: 3,
            ..ModelConfig::default()
        },
        &Device::Cpu,
    )
    .unwrap();
    let err = model
        .unet
        .forward(&Tensor::zeros((1, 1, 18, 16), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("multiple of 4"), "{err}");
}

#[test]
fn devices_parse_and_cuda_needs_the_feature() {
    assert!(parse_device("cpu").unwrap().is_cpu());
    assert!(parse_device("auto").is_ok());
    assert!(
        parse_device("gpu")
            .unwrap_err()
            .to_string()
            .contains("unknown device")
    );
    if !cfg!(feature = "cuda") {
        assert!(
            parse_device("cuda:0")
                .unwrap_err()
                .to_string()
                .contains("--features cuda")
        );
    }
}

#[test]
fn a_tiny_unet_overfits_one_slice() {
    let device = Device::Cpu;
    let size = 32;
    let mut image = vec![-0.3f32; size * size];
    let mut mask = vec![0f32; size * size];
    for r in 0..size {
        for c in 0..size {
            let (dy, dx) = (r as f32 - 12.0, c as f32 - 18.0);
            if dy * dy + dx * dx < 36.0 {
                image[r * size + c] = 0.02;
                mask[r * size + c] = 1.0;
            }
        }
    }
    let x = Tensor::from_vec(image, (1, 1, size, size), &device).unwrap();
    let t = Tensor::from_vec(mask, (1, 1, size, size), &device).unwrap();
    let model = Model::new(
        &ModelConfig {
            width: 8,
            depth: 3,
            init_seed: 3,
            ..ModelConfig::default()
        },
        &device,
    )
    .unwrap();
    let vars: Vec<Var> = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    let params = candle_nn::ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut adam = candle_nn::AdamW::new(vars, params).unwrap();
    let dice = |logits: &Tensor| -> f32 {
        let p = logits.ge(0.0).unwrap().to_dtype(DType::F32).unwrap();
        let inter = (&p * &t)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let total = (p.sum_all().unwrap() + t.sum_all().unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        2.0 * inter / total.max(1.0)
    };
    let mut best = 0.0f32;
    for _ in 0..300 {
        let logits = model.unet.forward_t(&x, true).unwrap();
        best = best.max(dice(&logits));
        if best > 0.95 {
            break;
        }
        let loss = bce_with_logits(&logits, &t).unwrap();
        adam.backward_step(&loss).unwrap();
    }
    assert!(best > 0.95, "Dice {best} after 300 steps");
}

#[test]
fn the_shipped_configs_have_valid_model_sections() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    for name in ["default.toml", "msd.toml", "smoke.toml"] {
        let config = ct_io::config::Config::load(&dir.join(name), &[]).unwrap();
        let model: ModelConfig = config.section().unwrap();
        if name == "msd.toml" {
            assert_eq!(
                model,
                ModelConfig::default(),
                "msd.toml is the reference network"
            );
        }
    }
}

#[test]
fn conv3x3_equals_candles_conv_with_exact_gradients_for_input_kernel_and_bias() {
    // Few input channels (stacked shifts), many (accumulated shifted products), and many on
    // both sides of an image large enough for Winograd, one image (products run in parallel).
    let last = seg_model::conv::Dims {
        batch: 1,
        channels: 16,
        height: 64,
        width: 64,
    };
    assert!(seg_model::winograd::pays_for_weight_grad(&last, 17));
    for (batch, cin, cout, h, w) in [(2, 3, 4, 5, 4), (2, 33, 2, 5, 4), (1, 16, 17, 64, 64)] {
        let x = randn(DType::F64, 1.0, (batch, cin, h, w)).unwrap();
        let w = randn(DType::F64, 0.3, (cout, cin, 3, 3)).unwrap();
        let b = randn(DType::F64, 1.0, cout).unwrap();
        let candle = x
            .conv2d(&w, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        let ours = conv3x3(&x, &w, Some(&b), false).unwrap();
        assert!(max_abs_diff(&ours, &candle) < 1e-12);
        let relu = conv3x3(&x, &w, Some(&b), true).unwrap();
        assert!(max_abs_diff(&relu, &candle.relu().unwrap()) < 1e-12);
        for fused_relu in [false, true] {
            check_gradient(|t| conv3x3(t, &w, Some(&b), fused_relu), x.clone());
            check_gradient(|t| conv3x3(&x, t, Some(&b), fused_relu), w.clone());
            check_gradient(|t| conv3x3(&x, &w, Some(t), fused_relu), b.clone());
        }
        check_gradient(|t| conv3x3(t, &w, None, false), x.clone());
    }
    // A narrowed (offset) input is handled as well, and f32 agrees with candle.
    let w = randn(DType::F32, 1.0, (4, 3, 3, 3)).unwrap();
    let wide = randn(DType::F32, 1.0, (2, 5, 5, 4)).unwrap();
    let part = wide.narrow(1, 2, 3).unwrap();
    let expected = part.contiguous().unwrap().conv2d(&w, 1, 1, 1, 1).unwrap();
    assert!(max_abs_diff(&conv3x3(&part, &w, None, false).unwrap(), &expected) < 1e-4);
}

#[test]
fn the_head_convolution_equals_candles_with_exact_gradients() {
    let device = Device::Cpu;
    for (batch, cin, cout, h, w) in [(2, 3, 1, 5, 4), (1, 16, 2, 8, 8)] {
        let x = randn(DType::F64, 1.0, (batch, cin, h, w)).unwrap();
        let w = randn(DType::F64, 0.3, (cout, cin, 1, 1)).unwrap();
        let b = randn(DType::F64, 1.0, cout).unwrap();
        let candle = x
            .conv2d(&w, 0, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs_diff(&conv1x1(&x, &w, &b).unwrap(), &candle) < 1e-12);
        check_gradient(|t| conv1x1(t, &w, &b), x.clone());
        check_gradient(|t| conv1x1(&x, t, &b), w.clone());
        check_gradient(|t| conv1x1(&x, &w, t), b.clone());
    }
    let bad = Tensor::zeros((1, 4, 1, 1), DType::F32, &device).unwrap();
    let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &device).unwrap();
    let b = Tensor::zeros(1, DType::F32, &device).unwrap();
    let err = conv1x1(&x, &bad, &b).unwrap_err().to_string();
    assert!(err.contains("conv1x1"), "{err}");
}

#[test]
fn the_concatenating_convolution_equals_conv_of_the_concatenation_with_exact_gradients() {
    let device = Device::Cpu;
    // Few channels (shifted products) and many on both sides of a larger image (Winograd).
    for (up_channels, skip_channels, cout, h, w) in [(2, 1, 3, 4, 2), (10, 6, 16, 64, 64)] {
        let up = randn(DType::F64, 1.0, (1, up_channels, h, w)).unwrap();
        let skip = randn(DType::F64, 1.0, (1, skip_channels, h, w)).unwrap();
        let cin = up_channels + skip_channels;
        let wt = randn(DType::F64, 0.3, (cout, cin, 3, 3)).unwrap();
        let b = randn(DType::F64, 1.0, cout).unwrap();
        let joined = Tensor::cat(&[&up, &skip], 1).unwrap();
        for relu in [false, true] {
            let fused = conv3x3_concat(&up, &skip, &wt, Some(&b), relu).unwrap();
            let plain = conv3x3(&joined, &wt, Some(&b), relu).unwrap();
            assert_eq!(max_abs_diff(&fused, &plain), 0.0);
            check_gradient(
                |t| conv3x3_concat(t, &skip, &wt, Some(&b), relu),
                up.clone(),
            );
            check_gradient(
                |t| conv3x3_concat(&up, t, &wt, Some(&b), relu),
                skip.clone(),
            );
            check_gradient(
                |t| conv3x3_concat(&up, &skip, t, Some(&b), relu),
                wt.clone(),
            );
            check_gradient(
                |t| conv3x3_concat(&up, &skip, &wt, Some(t), relu),
                b.clone(),
            );
        }
    }
    // Inputs that do not fit each other or the weight are errors, not panics.
    let up = Tensor::zeros((1, 2, 4, 4), DType::F32, &device).unwrap();
    let wt = Tensor::zeros((3, 3, 3, 3), DType::F32, &device).unwrap();
    for skip in [(1, 1, 4, 2), (1, 2, 4, 4)] {
        let skip = Tensor::zeros(skip, DType::F32, &device).unwrap();
        assert!(conv3x3_concat(&up, &skip, &wt, None, false).is_err());
    }
}

#[test]
fn the_gpu_convolution_has_exact_gradients_too() {
    // The composition used off the CPU (candle's conv2d + a companion op carrying the gradients)
    // runs on CPU as well: the same values as the CPU kernel, and exact gradients.
    let x = randn(DType::F64, 1.0, (2, 3, 5, 4)).unwrap();
    let w = randn(DType::F64, 0.3, (4, 3, 3, 3)).unwrap();
    let b = randn(DType::F64, 1.0, 4).unwrap();
    for relu in [false, true] {
        let composed = conv3x3_composed(&x, &w, Some(&b), relu).unwrap();
        let kernel = conv3x3(&x, &w, Some(&b), relu).unwrap();
        assert!(max_abs_diff(&composed, &kernel) < 1e-12);
        check_gradient(|t| conv3x3_composed(t, &w, Some(&b), relu), x.clone());
        check_gradient(|t| conv3x3_composed(&x, t, Some(&b), relu), w.clone());
        check_gradient(|t| conv3x3_composed(&x, &w, Some(t), relu), b.clone());
    }
    check_gradient(|t| conv3x3_composed(t, &w, None, false), x.clone());
}

#[test]
fn batch_norm_matches_candles_and_has_exact_gradients() {
    use candle_nn::{ModuleT, VarBuilder, VarMap};
    use seg_model::norm::BatchNorm;
    let device = Device::Cpu;
    let x = randn(DType::F64, 2.0, (3, 4, 5, 6))
        .unwrap()
        .affine(1.0, 0.5)
        .unwrap();
    let ours_map = VarMap::new();
    let ours = BatchNorm::new(4, VarBuilder::from_varmap(&ours_map, DType::F64, &device)).unwrap();
    let theirs_map = VarMap::new();
    let theirs = candle_nn::batch_norm(
        4,
        1e-5,
        VarBuilder::from_varmap(&theirs_map, DType::F64, &device),
    )
    .unwrap();
    // Two training passes (running statistics move), then evaluation.
    for _ in 0..2 {
        let a = ours.forward_t(&x, true, false).unwrap();
        let b = theirs.forward_t(&x, true).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-9);
    }
    let stat = |map: &VarMap, name: &str| map.data().lock().unwrap()[name].as_tensor().clone();
    for name in ["running_mean", "running_var"] {
        assert!(
            max_abs_diff(&stat(&ours_map, name), &stat(&theirs_map, name)) < 1e-9,
            "{name}"
        );
    }
    let a = ours.forward_t(&x, false, true).unwrap();
    let b = theirs.forward_t(&x, false).unwrap().relu().unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-9);
    // Gradients through the batch statistics, with and without the fused ReLU.
    for relu in [false, true] {
        check_gradient(|t| ours.forward_t(t, true, relu), x.clone());
        check_gradient(|t| ours.forward_t(t, false, relu), x.clone());
    }
    // γ and β: analytic gradients of Σ y² against central differences.
    let loss = |ours: &BatchNorm| -> Tensor {
        ours.forward_t(&x, true, true)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(&ours).backward().unwrap();
    for name in ["weight", "bias"] {
        let var = ours_map.data().lock().unwrap()[name].clone();
        let analytic: Vec<f64> = grads.get(&var).unwrap().to_vec1().unwrap();
        let base: Vec<f64> = var.to_vec1().unwrap();
        for c in 0..4 {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[c] += delta;
                var.set(&Tensor::new(v, &device).unwrap()).unwrap();
                loss(&ours).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(1e-6) - at(-1e-6)) / 2e-6;
            var.set(&Tensor::new(base.clone(), &device).unwrap())
                .unwrap();
            assert!(
                (analytic[c] - numeric).abs() < 1e-4 * (1.0 + numeric.abs()),
                "{name}[{c}]: {} vs {numeric}",
                analytic[c]
            );
        }
    }
}
