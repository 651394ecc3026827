//! The engine's ResNet against PyTorch: a CIFAR ResNet-20 made, trained for
//! three steps and run by PyTorch (tests/fixtures/resnet20_torch.safetensors,
//! written by tools/torch_resnet_fixture.py), loaded here tensor by tensor
//! under PyTorch's names. Eval mode (running statistics) and training mode
//! (batch statistics) must give PyTorch's logits, and one training-mode pass
//! must move every BatchNorm's running statistics exactly as PyTorch's did
//! (momentum 0.1, unbiased batch variance) — the semantics the issue names.

use lwf_engine::autodiff::{Tape, Workspace};
use lwf_engine::backend::{Backend, CpuBackend};
use lwf_engine::nn::{ArchKind, Net};
use lwf_engine::rng::Rng;
use lwf_engine::tensor::Tensor;
use safetensors::{tensor::Dtype, SafeTensors};

fn fixture() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/resnet20_torch.safetensors");
    std::fs::read(path).expect("the PyTorch fixture is in the repository")
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = st.tensor(name).unwrap_or_else(|_| panic!("fixture has no '{name}'"));
    assert_eq!(v.dtype(), Dtype::F32, "{name}");
    let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (v.shape().to_vec(), data)
}

/// The fixture's network on the engine: every parameter and running
/// statistic by name (fc is the first head).
fn load(b: &CpuBackend, st: &SafeTensors<'_>) -> Net<CpuBackend> {
    let mut net = Net::new(b, ArchKind::Resnet20.build([3, 16, 16]), &mut Rng::new(1));
    net.add_head(b, &mut Rng::new(1), &[0, 1, 2, 3, 4]);
    let mut loaded = 0;
    for p in net.params_mut() {
        let name = p.name.replace("heads.0.", "fc.");
        let (shape, data) = f32s(st, &name);
        assert_eq!(shape, p.value.shape.dims(), "{name}");
        p.value = Tensor::from_vec(b, &shape, &data);
        loaded += 1;
    }
    for bn in net.batchnorms_mut() {
        bn.running_mean = Tensor::from_vec(b, &[bn.c], &f32s(st, &format!("{}.running_mean", bn.name)).1);
        bn.running_var = Tensor::from_vec(b, &[bn.c], &f32s(st, &format!("{}.running_var", bn.name)).1);
        let count = st.tensor(&format!("{}.num_batches_tracked", bn.name)).unwrap();
        bn.num_batches_tracked = i64::from_le_bytes(count.data().try_into().unwrap()) as u64;
        loaded += 3;
    }
    let state_dict = st.names().iter().filter(|n| !n.starts_with("probe.")).count();
    assert_eq!(loaded, state_dict, "every state_dict tensor has its place in the engine's net");
    net
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: engine {g}, PyTorch {w}");
    }
}

#[test]
fn resnet20_eval_and_train_mode_match_pytorch() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let b = CpuBackend::new();
    let mut net = load(&b, &st);
    assert_eq!(net.batchnorms()[0].num_batches_tracked, 3);

    // Eval mode: running statistics.
    let (shape, x) = f32s(&st, "probe.x_eval");
    let mut ws = Workspace::new();
    {
        let mut tape = Tape::new(&b, &mut ws);
        let xv = tape.input(&shape, &x);
        let z = net.forward(&mut tape, xv, &[0]);
        assert_close(&b.download(tape.value(z[0])), &f32s(&st, "probe.logits_eval").1, 1e-4, "eval logits");
    }

    // Training mode: batch statistics, then the running statistics' update.
    let (shape, x) = f32s(&st, "probe.x_train");
    let stats = {
        let mut tape = Tape::new(&b, &mut ws);
        let xv = tape.input(&shape, &x);
        let z = net.forward_train(&mut tape, xv, &[0]);
        assert_close(&b.download(tape.value(z[0])), &f32s(&st, "probe.logits_train").1, 1e-4, "train logits");
        tape.take_batch_stats()
    };
    assert_eq!(stats.len(), net.batchnorms().len());
    net.update_running_stats(&b, stats, &mut ws);
    for bn in net.batchnorms() {
        let want_mean = f32s(&st, &format!("probe.after.{}.running_mean", bn.name)).1;
        let want_var = f32s(&st, &format!("probe.after.{}.running_var", bn.name)).1;
        assert_close(&bn.running_mean.to_vec(&b), &want_mean, 1e-5, &format!("{}.running_mean", bn.name));
        assert_close(&bn.running_var.to_vec(&b), &want_var, 1e-5, &format!("{}.running_var", bn.name));
        assert_eq!(bn.num_batches_tracked, 4, "{}", bn.name);
    }
}
