//! Turning wasm bytes into a [`Program`]: kind detection, compile or cache hit, link check.

use wasmtime::component::Component;
use wasmtime::{Engine, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::cache::CodeCache;
use crate::state::{ComponentState, ModuleState};
use crate::{Error, ProgramKind};

/// A compiled, link-checked program, ready to be started many times.
pub struct Program {
    pub(crate) digest: String,
    pub(crate) kind: ProgramKind,
    pub(crate) from_cache: bool,
    pub(crate) code: Code,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .field("from_cache", &self.from_cache)
            .finish_non_exhaustive()
    }
}

impl Program {
    /// What kind of Wasm this is.
    pub fn kind(&self) -> ProgramKind {
        self.kind
    }

    /// Hex sha256 of the wasm bytes (the cache key's first half).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether the compiled code came from the on-disk cache rather than a fresh compile.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}

/// The pre-instantiated code, one variant per kind.
pub(crate) enum Code {
    Module(wasmtime::InstancePre<ModuleState>),
    Command(CommandPre<ComponentState>),
    Proxy(ProxyPre<ComponentState>),
}

/// Compiled but not yet linked.
enum Compiled {
    Module(Module),
    Component(Component),
}

impl std::fmt::Display for ProgramKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Preview1Module => "WASI preview 1 module",
            Self::CliCommand => "wasi:cli/command component",
            Self::HttpProxy => "wasi:http/proxy component",
        })
    }
}

/// The linkers a program is checked against (built once per host).
pub(crate) struct Linkers {
    pub(crate) module: wasmtime::Linker<ModuleState>,
    pub(crate) component: wasmtime::component::Linker<ComponentState>,
}

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> wasmtime::Result<Self> {
        let mut module = wasmtime::Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module, |s: &mut ModuleState| &mut s.wasi)?;
        let mut component = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component)?;
        crate::world::add_to_linker(&mut component)?;
        Ok(Self { module, component })
    }
}

/// Compiles (or loads from `cache`) and links `bytes`. Blocking: run it off the async executor.
pub(crate) fn build(
    engine: &Engine,
    linkers: &Linkers,
    cache: Option<&CodeCache>,
    digest: String,
    origin: &str,
    bytes: &[u8],
) -> Result<Program, Error> {
    let is_component = check_header(origin, bytes)?;
    let (compiled, from_cache) = compile(engine, cache, &digest, origin, bytes, is_component)?;
    let (kind, code) = link(engine, linkers, origin, compiled)?;
    Ok(Program {
        digest,
        kind,
        from_cache,
        code,
    })
}

/// `Ok(true)` for a component, `Ok(false)` for a core module.
fn check_header(origin: &str, bytes: &[u8]) -> Result<bool, Error> {
    let not_wasm = |reason: &str| Error::NotWasm {
        origin: origin.to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() < 8 {
        return Err(not_wasm(&format!("only {} bytes long", bytes.len())));
    }
    if &bytes[..4] != b"\0asm" {
        let reason = if bytes.starts_with(b"(module") || bytes.starts_with(b"(component") {
            "it is WebAssembly text; compile it to a binary first"
        } else {
            "it does not start with the \\0asm magic number"
        };
        return Err(not_wasm(reason));
    }
    if wasmparser::Parser::is_component(bytes) {
        Ok(true)
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        Ok(false)
    } else {
        Err(not_wasm("unknown WebAssembly binary version"))
    }
}

fn compile(
    engine: &Engine,
    cache: Option<&CodeCache>,
    digest: &str,
    origin: &str,
    bytes: &[u8],
    is_component: bool,
) -> Result<(Compiled, bool), Error> {
    if let Some(cache) = cache
        && let Some(artifact) = cache.get(digest)
    {
        match deserialize(engine, &artifact, is_component) {
            Ok(c) => return Ok((c, true)),
            Err(e) => {
                tracing::warn!(origin, error = %e, "cached code does not load with this engine, recompiling");
                cache.remove(digest);
            }
        }
    }
    let classify = |e: wasmtime::Error| match wasmparser::Validator::new_with_features(
        wasmparser::WasmFeatures::all(),
    )
    .validate_all(bytes)
    {
        Err(invalid) => Error::InvalidWasm {
            origin: origin.to_string(),
            message: invalid.to_string(),
        },
        Ok(_) => Error::Compile {
            origin: origin.to_string(),
            message: format!("{e:#}"),
        },
    };
    let started = std::time::Instant::now();
    let artifact = if is_component {
        engine.precompile_component(bytes)
    } else {
        engine.precompile_module(bytes)
    }
    .map_err(classify)?;
    tracing::info!(
        origin,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compiled"
    );
    if let Some(cache) = cache
        && let Err(e) = cache.put(digest, &artifact)
    {
        tracing::warn!(origin, error = %e, "cannot write the code cache");
    }
    let compiled = deserialize(engine, &artifact, is_component).map_err(|e| Error::Compile {
        origin: origin.to_string(),
        message: format!("{e:#}"),
    })?;
    Ok((compiled, false))
}

/// Loads precompiled code.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8], is_component: bool) -> wasmtime::Result<Compiled> {
    // SAFETY: `artifact` was produced by `Engine::precompile_*` of an engine with the same compatibility
    // hash: either just now, or read from a cache entry whose embedded sha256 matched (so it is byte for
    // byte what this process or an identical build wrote). wasmtime additionally checks the header.
    unsafe {
        if is_component {
            Component::deserialize(engine, artifact).map(Compiled::Component)
        } else {
            Module::deserialize(engine, artifact).map(Compiled::Module)
        }
    }
}

const CLI_RUN: &str = "wasi:cli/run@0.2";
const HTTP_HANDLER: &str = "wasi:http/incoming-handler@0.2";

fn link(
    engine: &Engine,
    linkers: &Linkers,
    origin: &str,
    compiled: Compiled,
) -> Result<(ProgramKind, Code), Error> {
    let unknown = |detail: String| Error::UnknownWorld {
        origin: origin.to_string(),
        detail,
    };
    let missing = |e: wasmtime::Error| {
        let msg = format!("{e:#}");
        Error::MissingImport {
            origin: origin.to_string(),
            name: first_quoted(&msg).unwrap_or(msg),
        }
    };
    match compiled {
        Compiled::Module(module) => {
            if !module.exports().any(|e| e.name() == "_start") {
                return Err(unknown(
                    "a core module without a `_start` export (a library or reactor, not a program)"
                        .into(),
                ));
            }
            let pre = linkers.module.instantiate_pre(&module).map_err(missing)?;
            Ok((ProgramKind::Preview1Module, Code::Module(pre)))
        }
        Compiled::Component(component) => {
            let ty = component.component_type();
            let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
            let kind = if exports.iter().any(|e| e.starts_with(HTTP_HANDLER)) {
                ProgramKind::HttpProxy
            } else if exports.iter().any(|e| e.starts_with(CLI_RUN)) {
                ProgramKind::CliCommand
            } else {
                return Err(unknown(format!(
                    "a component exporting neither wasi:cli/run nor wasi:http/incoming-handler (exports: {})",
                    if exports.is_empty() {
                        "none".to_string()
                    } else {
                        exports.join(", ")
                    }
                )));
            };
            let pre = linkers
                .component
                .instantiate_pre(&component)
                .map_err(missing)?;
            let code = match kind {
                ProgramKind::HttpProxy => {
                    Code::Proxy(ProxyPre::new(pre).map_err(|e| unknown(format!("{e:#}")))?)
                }
                _ => Code::Command(CommandPre::new(pre).map_err(|e| unknown(format!("{e:#}")))?),
            };
            Ok((kind, code))
        }
    }
}

/// The first `quoted` name in a wasmtime link error (the import it could not satisfy).
fn first_quoted(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_the_problem() {
        assert!(matches!(check_header("x", b"\0asm\x01\0\0\0"), Ok(false)));
        assert!(matches!(check_header("x", b"\0asm\x0d\0\x01\0"), Ok(true)));
        let err = check_header("x", b"(module)").unwrap_err().to_string();
        assert!(err.contains("WebAssembly text"), "{err}");
        let err = check_header("x", b"\x7fELF\x02\x01\x01\0\0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("magic"), "{err}");
        assert!(
            check_header("x", b"")
                .unwrap_err()
                .to_string()
                .contains("0 bytes")
        );
    }

    #[test]
    fn quoted_import_names_are_extracted() {
        assert_eq!(
            first_quoted("component imports instance `wasi:nn/graph@0.2.0`, but ...").as_deref(),
            Some("wasi:nn/graph@0.2.0")
        );
        assert_eq!(first_quoted("no quotes"), None);
    }
}
