//! The Kubernetes objects in `deploy/kubernetes/` as the cluster will receive them: the
//! kustomization's output checked against the VictoriaMetrics operator's CRD schemas
//! (pinned in `tests/fixtures/vm-operator-schemas.yaml`), the VMRule against
//! `deploy/alerts.yaml`, the dashboard ConfigMap against the dashboard file, and the scrape
//! target against `[admin] listen` of `config/gallade.toml`.
//!
//! The output is assembled here from the files (for the kustomization fields this
//! directory uses, refusing any other), so every check runs without tools; where
//! `kubectl` is installed, `kubectl kustomize` must produce the same objects, and an
//! overlay must be able to move them to another namespace and label them; where `vmalert`
//! is, it must load the VMRule's groups.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_until;
use serde_yaml_ng::{Mapping, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// The value at a dotted path (`spec.targetEndpoints`); numbers index sequences.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        let next = match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        };
        next.unwrap_or_else(|| panic!("no `{path}` (stopped at `{key}`) in {v:?}"))
    })
}

fn string<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string: {:?}", at(v, path)))
}

fn key(object: &Value) -> (String, String) {
    (
        string(object, "kind").to_owned(),
        string(object, "metadata.name").to_owned(),
    )
}

// ---------------------------------------------------------------- the kustomization

const KUSTOMIZATION_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
];

/// What `kustomize build deploy/kubernetes` outputs, keyed by (kind, name), assembled from
/// the files. Refuses kustomization fields it does not apply, so it cannot silently differ.
fn assemble() -> BTreeMap<(String, String), Value> {
    let dir = repo("deploy/kubernetes");
    let k = yaml(&dir.join("kustomization.yaml"));
    let fields = k.as_mapping().expect("kustomization.yaml is a mapping");
    for field in fields.keys() {
        let field = field.as_str().unwrap_or_default();
        assert!(
            KUSTOMIZATION_FIELDS.contains(&field),
            "kustomization.yaml uses `{field}`, which this test's assembly does not apply; teach assemble() first"
        );
    }
    assert_eq!(string(&k, "kind"), "Kustomization");

    let mut objects = Vec::new();
    for resource in at(&k, "resources").as_sequence().expect("resources is a list") {
        let path = dir.join(resource.as_str().expect("a resource is a path"));
        let text = read(&path);
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .collect();
        objects.extend(docs);
    }
    for generator in k
        .get("configMapGenerator")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        objects.push(config_map(&dir, generator));
    }

    let namespace = k.get("namespace").and_then(Value::as_str);
    let mut labels = Mapping::new();
    for entry in k.get("labels").and_then(Value::as_sequence).into_iter().flatten() {
        let selectors = entry.get("includeSelectors").and_then(Value::as_bool).unwrap_or(false);
        assert!(
            !selectors,
            "labels with includeSelectors are not assembled here (and these kinds have no selectors)"
        );
        labels.extend(at(entry, "pairs").as_mapping().expect("pairs is a mapping").clone());
    }
    let mut out = BTreeMap::new();
    for mut object in objects {
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_mapping_mut)
            .expect("every object has metadata");
        if let Some(ns) = namespace {
            meta.insert("namespace".into(), ns.into());
        }
        if !labels.is_empty() {
            let own = meta
                .entry("labels".into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            let own = own.as_mapping_mut().expect("metadata.labels is a mapping");
            own.extend(labels.clone());
        }
        let k = key(&object);
        assert!(out.insert(k.clone(), object).is_none(), "{k:?} is defined twice");
    }
    out
}

/// The ConfigMap one `configMapGenerator` entry makes: each `key=path` (or `path`) entry of
/// `files` becomes a data key holding the file's text.
fn config_map(dir: &Path, generator: &Value) -> Value {
    let known = |v: &Value, fields: &[&str]| {
        for field in v.as_mapping().expect("a mapping").keys() {
            let field = field.as_str().unwrap_or_default();
            assert!(
                fields.contains(&field),
                "configMapGenerator `{field}` is not assembled here; teach config_map()"
            );
        }
    };
    known(generator, &["name", "files", "options"]);
    let options = generator
        .get("options")
        .cloned()
        .unwrap_or(Value::Mapping(Mapping::new()));
    known(&options, &["disableNameSuffixHash", "labels"]);
    assert_eq!(
        options.get("disableNameSuffixHash").and_then(Value::as_bool),
        Some(true),
        "the assembly does not compute kustomize's name hash (and the Grafana sidecar needs a fixed name)"
    );
    let mut data = Mapping::new();
    for file in at(generator, "files").as_sequence().expect("files is a list") {
        let file = file.as_str().expect("a files entry is a string");
        let (key, path) = match file.split_once('=') {
            Some((key, path)) => (key.to_owned(), path),
            None => (
                Path::new(file).file_name().unwrap().to_string_lossy().into_owned(),
                file,
            ),
        };
        data.insert(key.into(), read(&dir.join(path)).into());
    }
    let mut meta = Mapping::new();
    meta.insert("name".into(), at(generator, "name").clone());
    if let Some(labels) = options.get("labels") {
        meta.insert("labels".into(), labels.clone());
    }
    let mut cm = Mapping::new();
    cm.insert("apiVersion".into(), "v1".into());
    cm.insert("kind".into(), "ConfigMap".into());
    cm.insert("metadata".into(), Value::Mapping(meta));
    cm.insert("data".into(), Value::Mapping(data));
    Value::Mapping(cm)
}

fn object<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str) -> &'a Value {
    let mut of_kind = objects.values().filter(|o| string(o, "kind") == kind);
    let first = of_kind
        .next()
        .unwrap_or_else(|| panic!("the kustomization makes no {kind}"));
    assert!(of_kind.next().is_none(), "the kustomization makes more than one {kind}");
    first
}

// ---------------------------------------------------------------- the pinned schemas

/// Checks `value` against the structural-schema subset pinned in the fixture; pushes one
/// line per violation, named by its path.
fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("object");
    let fits = match ty {
        "object" => value.is_mapping(),
        "array" => value.is_sequence(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_bool(),
        other => panic!("the fixture uses type `{other}` at {path}, which check() does not know"),
    };
    if !fits {
        errors.push(format!("{path}: expected {ty}, found {value:?}"));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_sequence) {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value:?} is not one of {allowed:?}"));
        }
    }
    if let Some(seq) = value.as_sequence() {
        let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        if (seq.len() as u64) < min {
            errors.push(format!("{path}: {} items, at least {min} required", seq.len()));
        }
        if let Some(items) = schema.get("items") {
            for (i, item) in seq.iter().enumerate() {
                check(items, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(map) = value.as_mapping() {
        for required in schema
            .get("required")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if !map.contains_key(required) {
                errors.push(format!(
                    "{path}: required field {} is missing",
                    required.as_str().unwrap_or("?")
                ));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_mapping);
        let additional = schema.get("additionalProperties");
        for (k, v) in map {
            let name = k.as_str().map(str::to_owned).unwrap_or_else(|| format!("{k:?}"));
            let field = format!("{path}.{name}");
            match (properties.and_then(|p| p.get(k)), additional, properties) {
                (Some(sub), _, _) => check(sub, v, &field, errors),
                (None, Some(sub), _) => check(sub, v, &field, errors),
                (None, None, Some(_)) => errors.push(format!("{field}: unknown field")),
                // `type: object` with neither: the fixture leaves it opaque (metadata, status).
                (None, None, None) => {}
            }
        }
    }
}

/// A DNS-1123 label (`monitoring`) or, with dots, subdomain (`gatehouse.example`).
fn dns1123(s: &str, dots: bool, max: usize) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    s.len() <= max && if dots { s.split('.').all(part_ok) } else { part_ok(s) }
}

/// A label value, or the name part of a key: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends (values may be empty).
fn label_name(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && alnum(s.chars().next())
        && alnum(s.chars().last())
}

/// The parts of Kubernetes ObjectMeta these objects use, checked as the API server does.
fn check_metadata(object: &Value, errors: &mut Vec<String>) {
    let Some(meta) = object.get("metadata").and_then(Value::as_mapping) else {
        errors.push("metadata: missing".into());
        return;
    };
    for (k, v) in meta {
        let k = k.as_str().unwrap_or_default();
        match k {
            "name" if !v.as_str().is_some_and(|n| dns1123(n, true, 253)) => {
                errors.push(format!("metadata.name: {v:?} is not a DNS-1123 subdomain"))
            }
            "namespace" if !v.as_str().is_some_and(|n| dns1123(n, false, 63)) => {
                errors.push(format!("metadata.namespace: {v:?} is not a DNS-1123 label"))
            }
            "labels" | "annotations" => {
                for (lk, lv) in v.as_mapping().into_iter().flatten() {
                    let lk = lk.as_str().unwrap_or_default();
                    let (prefix, name) = lk.rsplit_once('/').unwrap_or(("", lk));
                    if !(label_name(name) && (prefix.is_empty() || dns1123(prefix, true, 253))) {
                        errors.push(format!("metadata.{k}: key {lk:?} is not a qualified name"));
                    }
                    match lv.as_str() {
                        Some(s) if k == "annotations" || s.is_empty() || label_name(s) => {}
                        _ => errors.push(format!("metadata.{k}.{lk}: {lv:?} is not a valid {k} value (a string)")),
                    }
                }
            }
            "name" | "namespace" => {}
            other => errors.push(format!(
                "metadata.{other}: not used by these manifests; check it before adding"
            )),
        }
    }
}

/// Every violation of `object` against the pinned schema of its apiVersion and kind.
fn violations(object: &Value) -> Vec<String> {
    let fixture = yaml(&repo("tests/fixtures/vm-operator-schemas.yaml"));
    let (api, kind) = (string(object, "apiVersion"), string(object, "kind"));
    let pinned = at(&fixture, "schemas")
        .as_sequence()
        .expect("schemas is a list")
        .iter()
        .find(|s| string(s, "apiVersion") == api && string(s, "kind") == kind);
    let Some(pinned) = pinned else {
        return vec![format!("{api} {kind}: no pinned schema for this apiVersion and kind")];
    };
    let mut errors = Vec::new();
    check(at(pinned, "openAPIV3Schema"), object, kind, &mut errors);
    check_metadata(object, &mut errors);
    errors
}

// ---------------------------------------------------------------- bounded tools

/// `TOOL ARGS` with a deadline: Some(stdout) on success, None if the tool is not installed.
fn run(tool: &str, args: &[&str]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let spawned = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("starting {tool}: {e}"),
    };
    let mut status = None;
    let done = wait_until(Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        child.kill().ok();
        child.wait().ok();
        panic!("{tool} {args:?} still running after 60s");
    }
    let status = status.unwrap();
    assert!(status.success(), "{tool} {args:?} failed ({status}): {}", read(&err));
    Some(read(&out))
}

fn kustomize_output(text: &str) -> BTreeMap<(String, String), Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("kubectl kustomize prints YAML");
            (key(&v), v)
        })
        .collect()
}

// ---------------------------------------------------------------- the specifications

#[test]
fn the_kustomization_makes_one_scrape_one_rule_and_one_dashboard() {
    let objects = assemble();
    let kinds: Vec<(&str, &str)> = objects.keys().map(|(k, n)| (k.as_str(), n.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("ConfigMap", "gatehouse-dashboard"),
            ("VMRule", "gatehouse"),
            ("VMStaticScrape", "gatehouse")
        ],
        "objects made by deploy/kubernetes"
    );
    for object in objects.values() {
        assert_eq!(
            string(object, "metadata.namespace"),
            "monitoring",
            "default namespace of {:?}",
            key(object)
        );
        let name = at(object, "metadata.labels").get("app.kubernetes.io/name");
        assert_eq!(
            name.and_then(Value::as_str),
            Some("gatehouse"),
            "app label of {:?}",
            key(object)
        );
    }
}

#[test]
fn every_object_matches_the_pinned_schema_of_its_kind() {
    let objects = assemble();
    let mut fields = 0;
    for object in objects.values() {
        let errors = violations(object);
        assert!(
            errors.is_empty(),
            "{:?} does not match its pinned schema:\n{}",
            key(object),
            errors.join("\n")
        );
        fields += count_fields(object);
    }
    assert!(
        fields > 100,
        "only {fields} fields checked across {} objects",
        objects.len()
    );
}

fn count_fields(v: &Value) -> usize {
    match v {
        Value::Mapping(m) => m.iter().map(|(_, v)| 1 + count_fields(v)).sum(),
        Value::Sequence(s) => s.iter().map(count_fields).sum(),
        _ => 0,
    }
}

#[test]
fn the_schema_check_refuses_misspelled_fields_wrong_types_and_empty_targets() {
    let objects = assemble();
    let mut scrape = object(&objects, "VMStaticScrape").clone();
    let endpoint = scrape["spec"]["targetEndpoints"][0].as_mapping_mut().unwrap();
    let interval = endpoint.remove("interval").expect("the scrape sets an interval");
    endpoint.insert("scrapeInterval".into(), interval); // the CRD spells it interval or scrape_interval
    endpoint.insert("scheme".into(), "tcp".into());
    endpoint.insert("targets".into(), Value::Sequence(vec![]));
    endpoint["labels"]["host"] = Value::from(4);
    scrape["metadata"]["labels"]["grafana_dashboard"] = Value::from(1);
    let errors = violations(&scrape);
    let expect = [
        "VMStaticScrape.spec.targetEndpoints[0].scrapeInterval: unknown field",
        "VMStaticScrape.spec.targetEndpoints[0].scheme: String(\"tcp\") is not one of",
        "VMStaticScrape.spec.targetEndpoints[0].targets: 0 items, at least 1 required",
        "VMStaticScrape.spec.targetEndpoints[0].labels.host: expected string",
        "metadata.labels.grafana_dashboard: Number(1) is not a valid labels value",
    ];
    for e in expect {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "no error starting {e:?} in:\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(errors.len(), expect.len(), "errors found:\n{}", errors.join("\n"));
}

#[test]
fn the_vmrule_holds_exactly_the_groups_of_alerts_yaml() {
    let alerts = yaml(&repo("deploy/alerts.yaml"));
    let objects = assemble();
    let rule = object(&objects, "VMRule");
    let (want, got) = (at(&alerts, "groups"), at(rule, "spec.groups"));
    let rules: usize = want
        .as_sequence()
        .unwrap()
        .iter()
        .map(|g| at(g, "rules").as_sequence().unwrap().len())
        .sum();
    assert!(
        want == got,
        "VMRule spec.groups differ from deploy/alerts.yaml's {} groups ({rules} rules); run deploy/kubernetes/generate-vmrule.sh",
        want.as_sequence().unwrap().len()
    );
    assert_eq!(
        alerts.as_mapping().unwrap().len(),
        1,
        "deploy/alerts.yaml has keys beside groups"
    );
}

#[test]
fn vmalert_loads_the_groups_of_the_vmrule() {
    // The operator hands spec.groups to vmalert, which parses MetricsQL and templates itself.
    let objects = assemble();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        serde_yaml_ng::to_string(at(object(&objects, "VMRule"), "spec")).unwrap(),
    )
    .unwrap();
    let rule_flag = format!("-rule={}", rules.display());
    if run("vmalert", &["-dryRun", &rule_flag, "-loggerLevel=ERROR"]).is_none() {
        skip!("vmalert (Debian's victoria-metrics) is not installed");
    }
}

#[test]
fn vmrule_yaml_is_what_the_generator_writes_from_alerts_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("vmrule.yaml");
    let status = Command::new("bash")
        .arg(repo("deploy/kubernetes/generate-vmrule.sh"))
        .arg(&fresh)
        .status()
        .expect("running bash");
    assert!(status.success(), "generate-vmrule.sh failed: {status}");
    let committed = read(&repo("deploy/kubernetes/vmrule.yaml"));
    let fresh = read(&fresh);
    let first_difference = committed.lines().zip(fresh.lines()).position(|(a, b)| a != b);
    assert!(
        committed == fresh,
        "deploy/kubernetes/vmrule.yaml differs from what generate-vmrule.sh writes now (first at line {:?} of {}): \
         edit deploy/alerts.yaml, not vmrule.yaml, and run the script",
        first_difference.map(|i| i + 1),
        fresh.lines().count()
    );
}

#[test]
fn the_dashboard_configmap_carries_the_dashboard_file_unchanged() {
    let file = read(&repo("deploy/kubernetes/grafana-dashboard.json"));
    let objects = assemble();
    let cm = object(&objects, "ConfigMap");
    assert_eq!(
        string(cm, "metadata.labels.grafana_dashboard"),
        "1",
        "the label Grafana's sidecar watches"
    );
    let data = at(cm, "data").as_mapping().unwrap();
    assert_eq!(data.len(), 1, "one dashboard per ConfigMap");
    let (key, carried) = data.iter().next().unwrap();
    assert!(
        key.as_str().unwrap().ends_with(".json"),
        "the sidecar writes the key as the file name: {key:?}"
    );
    assert!(
        carried.as_str() == Some(file.as_str()),
        "the ConfigMap's dashboard differs from the file"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&file).expect("the dashboard is JSON");
    assert_eq!(
        dashboard["uid"], "gatehouse-lb",
        "a fixed uid keeps links stable across re-provisioning"
    );
}

#[test]
fn the_dashboard_resolves_its_data_source_without_an_import() {
    // The sidecar provisions the file as it is: `__inputs` are never applied, so every
    // `${VAR}` a datasource names must be a datasource variable of the dashboard itself.
    let file = read(&repo("deploy/kubernetes/grafana-dashboard.json"));
    let dashboard: serde_json::Value = serde_json::from_str(&file).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "datasource")
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut uses = 0;
    let mut stack = vec![&dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(uid) = m.get("datasource").and_then(|d| d["uid"].as_str()) {
                    if let Some(var) = uid.strip_prefix("${").and_then(|u| u.strip_suffix('}')) {
                        assert!(
                            variables.contains(&var),
                            "datasource {uid} is no datasource variable ({variables:?})"
                        );
                        uses += 1;
                    }
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    assert!(uses > 10, "only {uses} datasource references found");
}

#[test]
fn the_dashboard_configmap_fits_a_client_side_apply() {
    // `kubectl apply` (and Argo CD) keep the whole object in the last-applied annotation,
    // and all annotations of an object together are limited to 256 KiB.
    let objects = assemble();
    let json = serde_json::to_string(object(&objects, "ConfigMap")).unwrap();
    assert!(
        json.len() < 256 * 1024,
        "the ConfigMap is {} bytes as JSON, over 262144",
        json.len()
    );
}

/// Seconds in a Prometheus duration such as `15s`, `1m` or `500ms`.
fn seconds(d: &str) -> f64 {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("{d:?} is not a duration"));
    n * match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => panic!("{d:?}: unit {unit:?}"),
    }
}

#[test]
fn the_scrape_targets_the_admin_listen_of_gallade_toml() {
    let gallade: toml::Value = toml::from_str(&read(&repo("config/gallade.toml"))).unwrap();
    // One address, or a list: the scraper reaches the ones off loopback.
    let listen: Vec<String> = match &gallade["admin"]["listen"] {
        toml::Value::String(one) => vec![one.clone()],
        toml::Value::Array(more) => more.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        other => panic!("[admin] listen in config/gallade.toml is {other}"),
    };
    let reachable: Vec<&str> = listen
        .iter()
        .map(String::as_str)
        .filter(|a| a.parse::<std::net::SocketAddr>().is_ok_and(|a| !a.ip().is_loopback()))
        .collect();
    let objects = assemble();
    let scrape = object(&objects, "VMStaticScrape");
    let endpoints = at(scrape, "spec.targetEndpoints").as_sequence().unwrap();
    assert_eq!(endpoints.len(), 1, "one endpoint: gallade");
    let endpoint = &endpoints[0];
    let targets: Vec<&str> = at(endpoint, "targets")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        targets, reachable,
        "scrape targets vs the [admin] listen addresses off loopback in config/gallade.toml"
    );
    assert_eq!(string(endpoint, "labels.host"), "gallade");
    assert_eq!(string(endpoint, "path"), "/metrics");
    let (interval, timeout) = (string(endpoint, "interval"), string(endpoint, "scrapeTimeout"));
    assert!(
        seconds(timeout) < seconds(interval),
        "scrapeTimeout {timeout} must be shorter than the interval {interval}"
    );
}

#[test]
fn the_scrape_job_is_the_job_the_alerts_match() {
    let objects = assemble();
    let job = string(object(&objects, "VMStaticScrape"), "spec.jobName");
    let alerts = read(&repo("deploy/alerts.yaml"));
    let matched: Vec<&str> = alerts
        .match_indices("job=\"")
        .map(|(i, m)| &alerts[i + m.len()..])
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert!(!matched.is_empty(), "deploy/alerts.yaml matches no job");
    assert!(
        matched.iter().all(|m| *m == job),
        "alerts match jobs {matched:?}, the scrape sets {job:?}"
    );
}

#[test]
fn kubectl_kustomize_builds_the_same_objects() {
    let Some(text) = run("kubectl", &["kustomize", repo("deploy/kubernetes").to_str().unwrap()]) else {
        skip!("kubectl is not installed; the assembled output was checked instead");
    };
    let built = kustomize_output(&text);
    let assembled = assemble();
    assert_eq!(
        built.keys().collect::<Vec<_>>(),
        assembled.keys().collect::<Vec<_>>(),
        "objects of kubectl kustomize vs the assembly"
    );
    for (k, object) in &built {
        assert!(
            object == &assembled[k],
            "{k:?} differs between kubectl kustomize and the assembly:\n{object:?}"
        );
    }
}

#[test]
fn kubectl_builds_an_overlay_that_moves_the_objects_and_labels_them() {
    let dir = tempfile::tempdir().unwrap();
    // kustomize takes a base only by a relative path: up to / and down again.
    let up = "../".repeat(dir.path().components().count() - 1);
    let base = format!("{up}{}", repo("deploy/kubernetes").strip_prefix("/").unwrap().display());
    let overlay = format!("resources:\n  - {base}\nnamespace: observability\nlabels:\n  - pairs:\n      team: infra\n");
    std::fs::write(dir.path().join("kustomization.yaml"), overlay).unwrap();
    let Some(text) = run("kubectl", &["kustomize", dir.path().to_str().unwrap()]) else {
        skip!("kubectl is not installed; cannot build an overlay");
    };
    let built = kustomize_output(&text);
    assert_eq!(built.len(), 3, "objects through the overlay");
    for (k, object) in &built {
        assert_eq!(
            string(object, "metadata.namespace"),
            "observability",
            "namespace of {k:?}"
        );
        let labels = at(object, "metadata.labels");
        assert_eq!(string(labels, "team"), "infra", "overlay label on {k:?}");
        assert_eq!(
            labels.get("app.kubernetes.io/name").and_then(Value::as_str),
            Some("gatehouse"),
            "base label on {k:?}"
        );
    }
}
