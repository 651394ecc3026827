//! lwf-engine: Learning without Forgetting (Li & Hoiem 2016) on a from-scratch
//! numeric engine — an autodiff tape, a CPU backend (rayon + matrixmultiply)
//! and a GPU backend of hand-written WGSL kernels (wgpu).
//!
//! Module map (see DESIGN.md):
//! - [`backend`]: the `Backend` trait (the op set) and its CPU and wgpu implementations
//! - [`tensor`], [`param`]: tensors, parameters and the parameterised layers
//! - [`autodiff`]: the define-by-run tape, its ops and loss terms
//! - [`nn`], [`optim`], [`step`]: the `Net` of a trunk plus heads, fused SGD,
//!   one training step
//! - [`data`]: IDX/NPY readers, class splits, seeded batching
//! - [`incremental`]: methods (lwf, finetune, …), protocols and the task loop
//! - [`metrics`], [`checkpoint`]: reports and safetensors checkpoints

pub mod app;
pub mod autodiff;
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod fsio;
pub mod incremental;
pub mod interrupt;
pub mod metrics;
pub mod nn;
pub mod onnx;
pub mod optim;
pub mod param;
pub mod results;
pub mod rng;
pub mod step;
pub mod tensor;

pub use backend::cpu::simd::SimdPath;
pub use backend::wgpu::WgpuBackend;
pub use backend::{Backend, CpuBackend};
pub use error::{Error, Result};
