use super::*;

fn created() -> Created {
    Created {
        id: "c0ffee".into(),
        pid: 1,
        bundle: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c0ffee".into(),
        ..Created::default()
    }
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

/// The pause container is no agent: nothing is asked of the CRI (the
/// socket here does not exist) and it starts untouched.
#[test]
fn a_pods_sandbox_is_not_asked_about_and_not_selected() {
    let got = facts(
        &created(),
        Path::new("/nonexistent/cri.sock"),
        &annotations(&[(CONTAINER_TYPE, "sandbox")]),
    )
    .unwrap();
    assert_eq!(got, None);
}

#[test]
fn a_container_without_the_cris_annotations_or_its_answer_fails() {
    let socket = Path::new("/nonexistent/cri.sock");
    let e = facts(&created(), socket, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains(CONTAINER_TYPE), "{e}");
    let e = facts(&created(), socket, &annotations(&[(CONTAINER_TYPE, "vm")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown container type \"vm\""), "{e}");
    let e = facts(
        &created(),
        socket,
        &annotations(&[(CONTAINER_TYPE, "container")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(SANDBOX_ID), "{e}");
    // containerd names the pod in its annotations: they must be there.
    let e = facts(
        &created(),
        socket,
        &annotations(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "5a4d")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(SANDBOX_NAMESPACE), "{e}");
    // The CRI cannot be reached: the container does not start.
    let all = annotations(&[
        (CONTAINER_TYPE, "container"),
        (SANDBOX_ID, "5a4d"),
        (SANDBOX_NAMESPACE, "agents"),
        (SANDBOX_NAME, "coder"),
    ]);
    let e = facts(&created(), socket, &all).unwrap_err().to_string();
    assert!(e.contains("the CRI at /nonexistent/cri.sock"), "{e}");
    // A bundle not named after the container is not read as its own.
    for bundle in [
        "/run/containerd/k8s.io/other",
        "run/k8s.io/c0ffee",
        "/run/../k8s.io/c0ffee",
    ] {
        let elsewhere = Created {
            bundle: bundle.into(),
            ..created()
        };
        let e = facts(&elsewhere, socket, &all).unwrap_err().to_string();
        assert!(
            e.contains("not in a bundle named after the container"),
            "{bundle}: {e}"
        );
    }
}

/// The CRI's answer must be of the sandbox the annotations name, ready,
/// and of the same namespace and pod; then its labels are the pod's.
#[test]
fn the_cris_answer_must_be_of_the_annotated_ready_sandbox() {
    let status = |id: &str, state: i32, ns: &str, name: &str| PodSandboxStatus {
        id: id.into(),
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: "u".into(),
            namespace: ns.into(),
        }),
        state,
        labels: [("app".to_owned(), "coder".to_owned())].into(),
    };
    let labels = verify(
        "5a4d",
        "agents",
        "coder",
        status("5a4d", 0, "agents", "coder"),
    )
    .unwrap();
    assert_eq!(labels.get("app").map(String::as_str), Some("coder"));
    let err = |s: PodSandboxStatus| {
        verify("5a4d", "agents", "coder", s)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(status("beef", 0, "agents", "coder")).contains("the answer is of sandbox \"beef\"")
    );
    assert!(err(status("5a4d", 1, "agents", "coder")).contains("not ready"));
    assert!(
        err(status("5a4d", 0, "default", "coder"))
            .contains("it is pod default/coder; the container's annotations say agents/coder")
    );
    assert!(err(status("5a4d", 0, "agents", "web")).contains("it is pod agents/web"));
    let mut no_meta = status("5a4d", 0, "agents", "coder");
    no_meta.metadata = None;
    assert!(err(no_meta).contains("it is pod /"));
    assert!(
        verify("5a4d", "", "", status("5a4d", 0, "", ""))
            .unwrap_err()
            .to_string()
            .contains("no namespace or name")
    );
}

/// A socket that is not root's (here: another uid's) is not asked.
#[test]
fn the_cri_socket_must_be_a_socket_of_agentguards_user() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "").unwrap();
    let e = check_socket(&plain).unwrap_err().to_string();
    assert!(e.contains("is not a socket"), "{e}");
    let e = check_socket(Path::new("cri.sock")).unwrap_err().to_string();
    assert!(e.contains("absolute"), "{e}");
    let sock = dir.path().join("cri.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    check_socket(&sock).unwrap();
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&sock, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = check_socket(&sock).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 65534"), "{e}");
    }
}

/// Our three messages against the CRI's own (k8s-cri, generated from the
/// Kubernetes project's api.proto): the request we send is the request
/// it reads, and its answer is read field for field.
#[test]
fn the_messages_match_the_cris_own_field_numbers() {
    use k8s_cri::v1 as cri;
    use prost::Message as _;
    let ours = PodSandboxStatusRequest {
        pod_sandbox_id: "5a4d".into(),
        verbose: true,
    };
    let theirs = cri::PodSandboxStatusRequest::decode(ours.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        (theirs.pod_sandbox_id.as_str(), theirs.verbose),
        ("5a4d", true)
    );

    let answer = cri::PodSandboxStatusResponse {
        status: Some(cri::PodSandboxStatus {
            id: "5a4d".into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "coder-7d9f".into(),
                uid: "0b1c".into(),
                namespace: "agents".into(),
                attempt: 2,
            }),
            state: cri::PodSandboxState::SandboxNotready as i32,
            created_at: 1_796_356_490,
            labels: [("app".to_owned(), "coder".to_owned())].into(),
            annotations: [("note".to_owned(), "x".to_owned())].into(),
            runtime_handler: "runc".into(),
            ..Default::default()
        }),
        info: [("info".to_owned(), "{}".to_owned())].into(),
        ..Default::default()
    };
    let framed = grpc_frame(&answer).unwrap();
    let read = PodSandboxStatusResponse::decode(grpc_message(framed).unwrap())
        .unwrap()
        .status
        .unwrap();
    assert_eq!(read.id, "5a4d");
    assert_eq!(read.state, 1);
    assert_eq!(read.labels.get("app").map(String::as_str), Some("coder"));
    assert_eq!(read.labels.len(), 1, "annotations are not labels");
    let meta = read.metadata.unwrap();
    assert_eq!(
        (
            meta.name.as_str(),
            meta.uid.as_str(),
            meta.namespace.as_str()
        ),
        ("coder-7d9f", "0b1c", "agents")
    );
}

#[test]
fn grpc_frames_are_checked() {
    let frame = grpc_frame(&PodSandboxStatusRequest {
        pod_sandbox_id: "x".into(),
        verbose: false,
    })
    .unwrap();
    assert_eq!(&frame[..5], &[0, 0, 0, 0, 3]);
    assert_eq!(grpc_message(frame.clone()).unwrap().len(), 3);
    let mut compressed = frame.to_vec();
    compressed[0] = 1;
    assert!(
        grpc_message(compressed.into())
            .unwrap_err()
            .contains("compressed")
    );
    assert!(
        grpc_message(frame.slice(..6))
            .unwrap_err()
            .contains("says 3 bytes")
    );
    assert!(grpc_message(Bytes::from_static(&[0, 0])).is_err());
    let mut refused = hyper::HeaderMap::new();
    assert!(!grpc_status(&refused).unwrap());
    refused.insert("grpc-status", "5".parse().unwrap());
    refused.insert("grpc-message", "sandbox%20not%20found".parse().unwrap());
    let e = grpc_status(&refused).unwrap_err().to_string();
    assert!(e.contains("gRPC status 5: sandbox not found"), "{e}");
}
