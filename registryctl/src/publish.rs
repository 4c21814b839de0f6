//! `registryctl publish`: declares an app's gRPC methods on its Service for
//! the Kubernetes `endpointslice` mode, from a protobuf descriptor set (what
//! `protoc --descriptor_set_out` or `buf build -o` write) or listed methods.
//!
//! For deploy pipelines: the Service carries the method set before the first
//! Pod starts, so discovery by method works from the first ready endpoint,
//! and `--replace` removes methods an app no longer serves (a registrar's
//! install only ever adds to the set).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use prost::Message;
use prost_types::FileDescriptorSet;
use registry_core::options::redact;
use registry_core::store::Scope;
use registry_kubernetes::{KubernetesConfig, KubernetesStore, Mode};

/// Options of `registryctl publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Backend URL: `kubernetes://?mode=endpointslice[&service=NAME]`.
    #[arg(long, env = "REGISTRY_URL")]
    url: String,
    /// Namespace (the Kubernetes namespace unless the URL sets `namespace=`).
    #[arg(long, default_value = registry_core::conf::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Environment.
    #[arg(long)]
    env: String,
    /// App id (its Service is the URL's `service=`, else the app id).
    #[arg(long)]
    app: String,
    /// A serialized `google.protobuf.FileDescriptorSet`: every method of
    /// every service in it is declared (repeatable).
    #[arg(long = "descriptor-set")]
    descriptor_sets: Vec<PathBuf>,
    /// A method path `/pkg.Service/Method` (repeatable; added to the descriptor sets' methods).
    #[arg(long = "method")]
    methods: Vec<String>,
    /// The app's version, written to the Service.
    #[arg(long)]
    version: Option<String>,
    /// Replace the Service's method set instead of adding to it.
    #[arg(long)]
    replace: bool,
}

/// The gRPC method paths of every service in a descriptor set.
pub fn methods_of(set: &FileDescriptorSet) -> Vec<String> {
    let mut methods = Vec::new();
    for file in &set.file {
        let package = file.package.as_deref().unwrap_or_default();
        for service in &file.service {
            let service_name = service.name.as_deref().unwrap_or_default();
            let full = if package.is_empty() { service_name.to_owned() } else { format!("{package}.{service_name}") };
            for method in &service.method {
                methods.push(format!("/{full}/{}", method.name.as_deref().unwrap_or_default()));
            }
        }
    }
    methods
}

/// Runs `registryctl publish`.
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let config: KubernetesConfig = args.url.parse().with_context(|| format!("--url {}", redact(&args.url)))?;
    anyhow::ensure!(
        config.mode == Mode::EndpointSlice,
        "publish declares methods on a Service for `mode=endpointslice`; {} is mode `{}`",
        redact(&args.url),
        config.mode
    );
    let mut methods = args.methods.clone();
    for path in &args.descriptor_sets {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let set = FileDescriptorSet::decode(bytes.as_slice())
            .with_context(|| format!("{} is not a serialized FileDescriptorSet", path.display()))?;
        let found = methods_of(&set);
        anyhow::ensure!(!found.is_empty(), "{} declares no gRPC service", path.display());
        methods.extend(found);
    }
    anyhow::ensure!(!methods.is_empty(), "nothing to publish: give --descriptor-set or --method");
    let store = KubernetesStore::connect(config).await?;
    let scope = Scope::new(&args.namespace, &args.env);
    let published = store.publish(&scope, &args.app, &methods, args.version.as_deref(), args.replace).await?;
    println!(
        "{} Service `{}`: {} methods for app `{}` in env `{}`",
        if published.changed { "updated" } else { "unchanged" },
        published.service,
        published.methods,
        args.app,
        args.env
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

    #[test]
    fn every_method_of_every_service_is_listed() {
        let method = |name: &str| MethodDescriptorProto { name: Some(name.into()), ..Default::default() };
        let service = |name: &str, methods: &[&str]| ServiceDescriptorProto {
            name: Some(name.into()),
            method: methods.iter().map(|m| method(m)).collect(),
            ..Default::default()
        };
        let set = FileDescriptorSet {
            file: vec![
                FileDescriptorProto {
                    package: Some("shop.v1".into()),
                    service: vec![service("Orders", &["Create", "Get"])],
                    ..Default::default()
                },
                FileDescriptorProto { service: vec![service("Bare", &["Ping"])], ..Default::default() },
            ],
        };
        assert_eq!(methods_of(&set), ["/shop.v1.Orders/Create", "/shop.v1.Orders/Get", "/Bare/Ping"]);
        let bytes = set.encode_to_vec();
        assert_eq!(FileDescriptorSet::decode(bytes.as_slice()).map(|s| methods_of(&s).len()).ok(), Some(3));
    }
}
