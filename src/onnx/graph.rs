//! A small builder over the prost messages: named values, constant
//! initialisers (f32 / i64, stored as little-endian raw bytes) and nodes with
//! one output. Every value name is unique; constants keep a readable name
//! (the checkpoint's tensor name where there is one).

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto,
    GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::HashSet;

/// An attribute of a node.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    used: HashSet<String>,
}

impl Graph {
    pub fn new() -> Self {
        Graph { nodes: Vec::new(), initializers: Vec::new(), used: HashSet::new() }
    }

    /// `hint`, or `hint_2`, `hint_3`, … if taken.
    fn unique(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut k = 2;
        while self.used.contains(&name) {
            name = format!("{hint}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }

    /// Reserve a name the graph's inputs or outputs use.
    pub fn reserve(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// A constant f32 tensor of shape `dims`.
    pub fn f32s(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "constant {name}: shape {dims:?}");
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, dims, DataType::Float, raw)
    }

    /// A constant i64 tensor of shape `dims` (axes, indices).
    pub fn i64s(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "constant {name}: shape {dims:?}");
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, dims, DataType::Int64, raw)
    }

    fn constant(&mut self, name: &str, dims: &[usize], ty: DataType, raw: Vec<u8>) -> String {
        let name = self.unique(name);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ty as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// A node `op(inputs)` with attributes; its one output is named after
    /// `hint` and returned.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, hint: &str) -> String {
        let out = self.unique(hint);
        self.node_into(op, inputs, attrs, &out);
        out
    }

    /// A node writing to `output` (a name already reserved: a graph output).
    pub fn node_into(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, output: &str) {
        let attribute = attrs.into_iter().map(|(name, a)| attribute(name, a)).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(format!("{op}_{}", self.nodes.len())),
            op_type: Some(op.to_string()),
            attribute,
            ..Default::default()
        });
    }

    /// The finished graph with its inputs and outputs.
    pub fn finish(self, name: &str, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>) -> GraphProto {
        GraphProto {
            name: Some(name.to_string()),
            node: self.nodes,
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto { name: Some(name.to_string()), ..Default::default() };
    match a {
        Attr::Int(v) => {
            p.r#type = Some(AttributeType::Int as i32);
            p.i = Some(v);
        }
        Attr::Ints(v) => {
            p.r#type = Some(AttributeType::Ints as i32);
            p.ints = v;
        }
        Attr::Float(v) => {
            p.r#type = Some(AttributeType::Float as i32);
            p.f = Some(v);
        }
    }
    p
}

/// A dimension: a fixed size, or a named dynamic one.
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// The description of an f32 graph input or output of shape `dims`.
pub fn f32_value(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
