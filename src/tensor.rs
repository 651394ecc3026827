//! `Tensor<B>`: a backend buffer and its shape. Always contiguous, always f32;
//! transposes are gemm flags, never layouts.

use crate::backend::Backend;
use std::fmt;

/// Dimensions, outermost first (NCHW for images, rows × cols for matrices).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn new(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// First dimension (the batch for activations).
    pub fn rows(&self) -> usize {
        self.0.first().copied().unwrap_or(1)
    }
    /// Product of all but the first dimension.
    pub fn row_len(&self) -> usize {
        self.0.iter().skip(1).product()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

pub struct Tensor<B: Backend> {
    pub buf: B::Buf,
    pub shape: Shape,
}

impl<B: Backend> Tensor<B> {
    pub fn zeros(b: &B, dims: &[usize]) -> Self {
        let shape = Shape::new(dims);
        Tensor { buf: b.zeros(shape.numel()), shape }
    }
    /// Upload host data; panics with both shapes if the length does not fit.
    pub fn from_vec(b: &B, dims: &[usize], data: &[f32]) -> Self {
        let shape = Shape::new(dims);
        assert_eq!(
            shape.numel(),
            data.len(),
            "Tensor::from_vec: shape {shape} needs {} values, got {}",
            shape.numel(),
            data.len()
        );
        Tensor { buf: b.upload(data), shape }
    }
    pub fn to_vec(&self, b: &B) -> Vec<f32> {
        let mut v = b.download(&self.buf);
        v.truncate(self.shape.numel());
        v
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// A device-side copy (checkpoints' anchors, the frozen old model).
    pub fn duplicate(&self, b: &B) -> Self {
        let mut buf = b.zeros(self.numel());
        b.copy(&mut buf, 0, &self.buf, 0, self.numel());
        Tensor { buf, shape: self.shape.clone() }
    }
}
