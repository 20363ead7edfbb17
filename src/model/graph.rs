//! One ONNX graph of the engine as an ONNX Runtime session, checked against the manifest at load:
//! tensor names, and the channel dimension where the graph declares it. Outputs are read with their
//! shapes checked, so a wrong graph fails naming the graph and the tensor, not deep inside a stage.

use std::path::Path;

use ort::session::{Session, SessionOutputs};
use ort::value::{PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};

use crate::backend::{self, BackendOptions, Provider};
use crate::engine::{Engine, FeatureLayout};
use crate::error::{Error, Result};

use super::roi_align::Pooled;

/// A session and the file name it was opened from (for error messages).
pub struct Graph {
    pub session: Session,
    pub file: String,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("file", &self.file).finish()
    }
}

/// What a graph must expose: input and output names, and which tensors carry the FPN channels.
pub struct Contract<'a> {
    pub inputs: &'a [&'a str],
    pub outputs: &'a [&'a str],
    pub with_channels: &'a [&'a str],
    pub channels: usize,
    /// Axis of the channels in those tensors.
    pub channel_axis: usize,
}

/// A head graph (box or mask): pooled features [R, C, S, S] (or [R, S, S, C]) in, named outputs out.
#[derive(Debug)]
pub struct Head {
    graph: Graph,
    input: String,
    layout: FeatureLayout,
}

impl Head {
    pub fn open(
        engine: &Engine,
        (file, input, layout): (&str, &str, FeatureLayout),
        outputs: &[&str],
        stage: &str,
        opts: &BackendOptions,
    ) -> Result<(Self, Provider)> {
        let contract = Contract {
            inputs: &[input],
            outputs,
            with_channels: &[input],
            channels: engine.manifest.model.fpn_channels,
            channel_axis: layout.channel_axis(),
        };
        let (graph, provider) = Graph::open(&engine.dir, file, stage, opts, &contract)?;
        let input = input.to_string();
        Ok((
            Head {
                graph,
                input,
                layout,
            },
            provider,
        ))
    }

    /// Runs once on `rois` ROIs of `channels` x `size` x `size` zeros (in `buffer`, whose capacity is
    /// kept): ONNX Runtime's memory arena then holds what that many ROIs need.
    pub fn warm(
        &mut self,
        (rois, channels, size): (usize, usize, usize),
        buffer: &mut Vec<f32>,
    ) -> Result<()> {
        let shape = match self.layout {
            FeatureLayout::Nchw => [rois, channels, size, size],
            FeatureLayout::Nhwc => [rois, size, size, channels],
        };
        buffer.clear();
        buffer.resize(shape.iter().product(), 0.0);
        self.graph.run(&self.input, shape, buffer).map(drop)
    }

    pub fn forward(&mut self, pooled: &Pooled<'_>) -> Result<SessionOutputs<'_>> {
        self.graph.run(&self.input, pooled.shape, pooled.data)
    }
}

impl Graph {
    /// Opens `dir/file` with the requested backend and checks it against `contract`.
    pub fn open(
        dir: &Path,
        file: &str,
        stage: &str,
        opts: &BackendOptions,
        contract: &Contract<'_>,
    ) -> Result<(Self, Provider)> {
        let (session, provider) = backend::session(&dir.join(file), stage, opts)?;
        let graph = Graph {
            session,
            file: file.to_string(),
        };
        graph.check_names(contract.inputs, contract.outputs)?;
        graph.check_channels(contract)?;
        Ok((graph, provider))
    }

    fn check_names(&self, inputs: &[&str], outputs: &[&str]) -> Result<()> {
        for (what, names, outlets) in [
            ("input", inputs, self.session.inputs()),
            ("output", outputs, self.session.outputs()),
        ] {
            if let Some(name) = names
                .iter()
                .find(|n| !outlets.iter().any(|o| o.name() == **n))
            {
                let has: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
                return Err(Error::graph(
                    &self.file,
                    format!("has no {what} named {name:?} (it has {has:?})"),
                ));
            }
        }
        Ok(())
    }

    /// Where the graph declares the channel dimension of a named tensor, it must be the manifest's
    /// `model.fpn_channels`: caught at load, naming the graph, rather than at the first frame.
    fn check_channels(&self, contract: &Contract) -> Result<()> {
        let (names, channels) = (contract.with_channels, contract.channels);
        let outlets = self.session.inputs().iter().chain(self.session.outputs());
        for o in outlets.filter(|o| names.contains(&o.name())) {
            let Some(shape) = o.dtype().tensor_shape() else {
                continue;
            };
            let declared = shape.get(contract.channel_axis);
            if let Some(&c) = declared.filter(|&&c| c > 0 && c as usize != channels) {
                return Err(Error::graph(
                    &self.file,
                    format!(
                        "{} has shape {:?}: {c} channels, but the manifest says model.fpn_channels = {channels}",
                        o.name(),
                        &shape[..]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs the graph on one tensor of `shape` (f32, or the uint8 input of a quantized backbone).
    pub fn run<
        T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
        const N: usize,
    >(
        &mut self,
        input: &str,
        shape: [usize; N],
        data: &[T],
    ) -> Result<SessionOutputs<'_>> {
        let tensor = TensorRef::from_array_view((shape, data))?;
        self.session
            .run(ort::inputs![input => tensor])
            .map_err(|e| Error::graph(&self.file, format!("run at {shape:?}: {e}")))
    }
}

/// Extracts an f32 output of `graph` and checks its shape: `expect` entries of -1 match any size.
pub fn output<'a>(
    outputs: &'a SessionOutputs<'_>,
    graph: &str,
    name: &str,
    expect: &[i64],
) -> Result<(Vec<usize>, &'a [f32])> {
    typed_output(outputs, graph, name, expect)
}

/// [`output`] for any element type (the uint8 levels of an INT8 backbone, their zero points).
pub fn typed_output<'a, T: PrimitiveTensorElementType + std::fmt::Debug>(
    outputs: &'a SessionOutputs<'_>,
    graph: &str,
    name: &str,
    expect: &[i64],
) -> Result<(Vec<usize>, &'a [T])> {
    let value = outputs
        .get(name)
        .ok_or_else(|| Error::graph(graph, format!("output {name:?} missing")))?;
    let (shape, data) = value
        .try_extract_tensor::<T>()
        .map_err(|e| Error::graph(graph, format!("output {name:?}: {e}")))?;
    let dims: &[i64] = shape;
    let ok = dims.len() == expect.len() && dims.iter().zip(expect).all(|(d, e)| *e < 0 || d == e);
    if !ok {
        return Err(Error::graph(
            graph,
            format!("output {name:?} has shape {dims:?}, expected {expect:?} (-1 = any)"),
        ));
    }
    Ok((dims.iter().map(|&d| d as usize).collect(), data))
}

/// Whether output `name` holds uint8 values (an INT8 backbone's quantized levels).
pub fn is_u8(outputs: &SessionOutputs<'_>, name: &str) -> bool {
    outputs.get(name).is_some_and(|v| is_u8_type(v.dtype()))
}

fn is_u8_type(t: &ValueType) -> bool {
    matches!(
        t,
        ValueType::Tensor {
            ty: TensorElementType::Uint8,
            ..
        }
    )
}

impl Graph {
    /// Whether input `name` takes uint8 values.
    pub fn input_is_u8(&self, name: &str) -> bool {
        self.session
            .inputs()
            .iter()
            .any(|i| i.name() == name && is_u8_type(i.dtype()))
    }
}
