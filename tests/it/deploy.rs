//! The deployment files under `deploy/` against the binary they deploy: every port, path,
//! environment variable, configuration key and subcommand flag they name must exist, and
//! `infragpt devagent` must really answer a conversation. The observability files are in
//! `observability.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use infragpt::config::{self, Config};
use infragpt::testkit::devagent::DEMO_LABEL;
use infragpt::testkit::slack_sim::SimConfig;
use serde_yaml::Value;

use crate::e2e::conversations::{ALICE, Chat, service};
use crate::support::app::VAULT_KEY;
use crate::support::wait::eventually;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document of a file.
fn documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// The `${VAR}` / `${VAR:-default}` names a text refers to.
fn env_refs(text: &str) -> BTreeSet<String> {
    // Comments may mention the syntax itself.
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    text.split("${")
        .skip(1)
        .map(|rest| {
            rest.split(['}', ':'])
                .next()
                .expect("a variable name")
                .to_owned()
        })
        .collect()
}

/// The paths the service serves (its OpenAPI document, which a test keeps equal to the
/// routes the app registers).
fn served_paths() -> BTreeSet<String> {
    infragpt::app::openapi::build()
        .paths
        .paths
        .keys()
        .cloned()
        .collect()
}

/// Loads a configuration text with exactly `env` as its environment: unknown keys, missing
/// variables and invalid values fail here as they would at start-up.
fn load_config(text: &str, origin: &str, env: &BTreeMap<String, String>) -> Config {
    config::load_str_with_env(text, origin, |k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{origin} does not load: {e}"))
}

/// `infragpt <args> --help`.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_infragpt"))
        .args(args)
        .arg("--help")
        .output()
        .expect("running infragpt --help");
    assert!(out.status.success(), "infragpt {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubernetes_manifests_name_what_the_binary_has() {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(repo("deploy/kubernetes")).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        let rel = format!(
            "deploy/kubernetes/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        for doc in documents(&rel) {
            by_kind
                .entry(s(&doc["kind"]).to_owned())
                .or_default()
                .push(doc);
        }
    }
    let one = |kind: &str| -> &Value {
        let docs = &by_kind[kind];
        assert_eq!(docs.len(), 1, "one {kind}");
        &docs[0]
    };
    let deployment = one("Deployment");
    let configmap = one("ConfigMap");
    let secret = one("Secret");
    let pdb = one("PodDisruptionBudget");
    assert_eq!(deployment["spec"]["replicas"], Value::from(3));
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);

    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], Value::from("serve"));

    // The environment: literals and Secret keys that exist.
    let secret_data = secret["stringData"].as_mapping().expect("stringData");
    let mut env = BTreeMap::new();
    for var in container["env"].as_sequence().expect("env") {
        let name = s(&var["name"]).to_owned();
        let value = if let Some(v) = var.get("value") {
            s(v).to_owned()
        } else {
            let from = &var["valueFrom"]["secretKeyRef"];
            assert_eq!(
                from["name"], secret["metadata"]["name"],
                "{name}: its Secret"
            );
            let key = s(&from["key"]);
            s(secret_data
                .get(key)
                .unwrap_or_else(|| panic!("{name}: the Secret has no key {key}")))
            .to_owned()
        };
        env.insert(name, value);
    }

    // The configuration: mounted where INFRAGPT_CONFIG points, every ${VAR} in the env,
    // every key known to the binary (unknown keys are refused by the loader).
    let mount = &container["volumeMounts"][0];
    let volume = &pod["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let (file, text) = configmap["data"]
        .as_mapping()
        .expect("data")
        .iter()
        .next()
        .expect("one file");
    assert_eq!(
        env["INFRAGPT_CONFIG"],
        format!("{}/{}", s(&mount["mountPath"]), s(file))
    );
    let text = s(text);
    for var in env_refs(text) {
        assert!(
            env.contains_key(&var),
            "the ConfigMap uses ${{{var}}}: not in the env"
        );
    }
    let config = load_config(text, "deploy/kubernetes/configmap.yaml", &env);

    // Ports and probes.
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().expect("port")))
        .collect();
    assert_eq!(ports["http"], u64::from(config.port));
    assert_eq!(ports["grpc"], u64::from(config.grpc_port));
    assert_eq!(ports.get("ops").copied(), config.ops.port.map(u64::from));
    let paths = served_paths();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert!(paths.contains(s(&get["path"])), "{probe} {:?}", get["path"]);
        assert!(ports.contains_key(s(&get["port"])), "{probe} port");
    }
    assert_eq!(
        s(&container["readinessProbe"]["httpGet"]["path"]),
        "/readyz"
    );
    assert_eq!(
        s(&container["livenessProbe"]["httpGet"]["path"]),
        "/healthz"
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        s(&annotations["prometheus.io/port"]).parse::<u64>().ok(),
        Some(ports["ops"])
    );
    assert!(paths.contains(s(&annotations["prometheus.io/path"])));

    // Services: one for HTTP, one for gRPC SendReply, both onto named container ports.
    let mut targets = BTreeSet::new();
    for svc in &by_kind["Service"] {
        assert_eq!(&svc["spec"]["selector"], labels);
        for p in svc["spec"]["ports"].as_sequence().expect("ports") {
            let target = s(&p["targetPort"]);
            assert!(ports.contains_key(target), "Service targets {target}");
            targets.insert(target.to_owned());
        }
    }
    assert!(
        targets.contains("http") && targets.contains("grpc"),
        "{targets:?}"
    );
}

#[test]
fn compose_and_dockerfile_name_what_the_binary_has() {
    let compose = documents("deploy/docker-compose.yml").remove(0);
    let services = &compose["services"];
    let app = &services["infragpt"];
    assert!(services.get("postgres").is_some() && services.get("devagent").is_some());

    // Compose's own `${X:-default}` / `${X:?message}` stand for what the operator sets.
    let compose_env = |svc: &Value| -> BTreeMap<String, String> {
        svc["environment"]
            .as_mapping()
            .expect("environment")
            .iter()
            .map(|(k, v)| {
                let name = s(k).to_owned();
                let value = s(v);
                let value = match value.strip_prefix("${") {
                    None => value.to_owned(),
                    Some(_) if name == "VAULT_KEY" => VAULT_KEY.to_owned(),
                    Some(rest) => match rest.split_once(":-") {
                        Some((_, default)) if !default.trim_end_matches('}').is_empty() => {
                            default.trim_end_matches('}').to_owned()
                        }
                        _ => format!("set-by-the-operator-{name}"),
                    },
                };
                (name, value)
            })
            .collect()
    };
    let env = compose_env(app);
    let volume = s(&app["volumes"][0]);
    let (source, target) = volume.split_once(':').expect("source:target");
    assert_eq!(env["INFRAGPT_CONFIG"], target.trim_end_matches(":ro"));
    let text = read(&format!("deploy/{}", source.trim_start_matches("./")));
    for var in env_refs(&text) {
        assert!(
            env.contains_key(&var) || text.contains(&format!("${{{var}:-")),
            "${{{var}}} is not set by compose"
        );
    }
    let config = load_config(&text, source, &env);
    let published: BTreeSet<u64> = app["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| s(p).rsplit(':').next().unwrap().parse().expect("port"))
        .collect();
    let want: BTreeSet<u64> = [Some(config.port), Some(config.grpc_port), config.ops.port]
        .into_iter()
        .flatten()
        .map(u64::from)
        .collect();
    assert_eq!(published, want, "published container ports");
    let health = app["healthcheck"]["test"]
        .as_sequence()
        .expect("healthcheck")
        .iter()
        .map(s)
        .find(|a| a.starts_with("http://"))
        .expect("a URL");
    assert_eq!(health, format!("http://127.0.0.1:{}/healthz", config.port));

    // The development agent: its flags exist, it listens where the service calls it and
    // answers the service's gRPC port with the service's reply token.
    let devagent = &services["devagent"];
    let args: Vec<&str> = devagent["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .map(s)
        .collect();
    assert_eq!(args[0], "devagent");
    let help_text = help(&["devagent"]);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help_text.contains(flag), "infragpt devagent has no {flag}");
    }
    let flag = |name: &str| args[args.iter().position(|a| *a == name).expect(name) + 1];
    let listen_port = flag("--listen").rsplit(':').next().unwrap();
    assert!(
        config.agent.endpoint.ends_with(&format!(":{listen_port}")),
        "{}",
        config.agent.endpoint
    );
    assert!(flag("--backend").ends_with(&format!(":{}", config.grpc_port)));
    let agent_env = compose_env(devagent);
    for name in agent_env.keys() {
        assert!(
            help_text.contains(name.as_str()),
            "infragpt devagent reads no {name}"
        );
    }
    assert_eq!(
        agent_env.get("INFRAGPT_DEVAGENT_REPLY_TOKEN"),
        env.get("AGENT_REPLY_TOKEN"),
        "the agent presents the service's reply token"
    );

    // The Dockerfile: the ports of the default configuration, a health check on a served
    // path, a non-root user, sources that exist.
    let dockerfile = read("deploy/Dockerfile");
    let mut image_env = BTreeMap::new();
    let mut exposed = BTreeSet::new();
    let mut user = None;
    for line in dockerfile.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV k=v");
                image_env.insert(k.to_owned(), v.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("EXPOSE ") {
            exposed.extend(
                rest.split_whitespace()
                    .map(|p| p.parse::<u64>().expect("port")),
            );
        } else if let Some(rest) = line.strip_prefix("USER ") {
            user = Some(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("COPY ")
            && !rest.starts_with("--from")
        {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    repo(src).exists(),
                    "the Dockerfile copies {src}, which does not exist"
                );
            }
        }
    }
    let user = user.expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as {user}"
    );
    let default = load_config(
        &read("config/default.yaml"),
        "config/default.yaml",
        &image_env,
    );
    assert!(
        exposed.contains(&u64::from(default.port))
            && exposed.contains(&u64::from(default.grpc_port))
    );
    assert!(exposed.is_superset(&want), "the compose ports are exposed");
    let check = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK");
    assert!(check.contains("/healthz") && served_paths().contains("/healthz"));
    assert!(check.contains("${PORT}") && image_env.contains_key("PORT"));
    assert!(dockerfile.contains("CMD [\"serve\"]"));
}

/// `infragpt devagent` (the binary) answers a conversation of the served app.
#[actix_rt::test]
async fn the_devagent_subcommand_answers_a_turn() {
    let app = service(SimConfig::default()).start().await;
    let listen = app.dev_agent_config().bind;
    let mut child = Command::new(env!("CARGO_BIN_EXE_infragpt"))
        .args(["devagent", "--listen", &listen.to_string()])
        .args(["--backend", &format!("http://{}", app.grpc_addr())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("infragpt devagent");
    eventually("infragpt devagent listens", async || {
        tokio::net::TcpStream::connect(listen).await.is_ok()
    })
    .await;
    let ts = app.mention(ALICE, "what is on call today?");
    app.wait_replies(&ts, 1).await;
    let reply = &app.bot_replies(&ts)[0];
    assert!(reply.text.contains(DEMO_LABEL), "{}", reply.text);
    // SIGTERM: it stops cleanly.
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "infragpt devagent exited with {status}");
    app.stop().await;
}
