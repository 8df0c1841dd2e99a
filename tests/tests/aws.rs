//! AWS SigV4 end to end: unmodified boto3 and the AWS CLI as the agent,
//! holding placeholder keys, against moto's server with authentication on
//! (every request must be signed by a known key, and is allowed by that
//! identity's IAM policies), STS included. The agent's signature never
//! verifies; agentguard's does; actions, regions and paths outside the
//! policy are refused before anything is sent.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{Daemon, TestCa, ok, require_root, secret_file, text};

const AGENT: &str = "aws-agent";
const MOTO_IP: &str = "127.0.0.8";
const EC2: &str = "ec2.agentguard.test";
const S3: &str = "s3.agentguard.test";

/// moto's server over TLS, set up as an account (tests/servers/aws_setup.py)
/// and then with authentication on; killed on drop.
struct Moto {
    child: Child,
    port: u16,
    ca: PathBuf,
    keys: serde_json::Value,
}

impl Moto {
    fn start(dir: &Path, ca: &TestCa) -> Self {
        let (cert, key) = ca.leaf_files_for(&[EC2, S3, MOTO_IP], "moto", dir);
        // A free port (moto_server takes a number, not 0).
        let port = std::net::TcpListener::bind((MOTO_IP, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let child = Command::new("moto_server")
            // The test hosts' names are not AWS's: without this, moto takes
            // `s3.agentguard.test` for a virtual-hosted bucket `s3`.
            .env("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
            .args(["-H", MOTO_IP, "-p", &port.to_string(), "--ssl-cert"])
            .arg(&cert)
            .arg("--ssl-key")
            .arg(&key)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moto_server (pip install moto[server]: cargo xtask setup)");
        // Owned (killed on drop) before anything can fail.
        let mut moto = Self {
            child,
            port,
            ca: ca.pem_path.clone(),
            keys: serde_json::Value::Null,
        };
        let addr = SocketAddr::from((MOTO_IP.parse::<std::net::Ipv4Addr>().unwrap(), port));
        // moto imports every service at start: slow on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start:\n{}",
                std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
            );
            assert!(
                moto.child.try_wait().unwrap().is_none(),
                "moto_server exited:\n{}",
                std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/servers/aws_setup.py");
        let out = Command::new("python3")
            .arg(setup)
            .arg(moto.url(MOTO_IP))
            .arg(&ca.pem_path)
            .output()
            .unwrap();
        moto.keys = serde_json::from_str(&ok(&out)).unwrap();
        moto
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    /// Runs boto3 `code` from outside every agent, straight to moto, with
    /// `client(service, key_id, secret)` defined.
    fn direct(&self, code: &str) -> String {
        let script = format!(
            "import boto3, botocore\n\
             from botocore.exceptions import ClientError\n\
             def client(service, key_id, secret):\n\
             \x20   return boto3.client(service, endpoint_url='{url}', verify='{ca}', region_name='eu-west-1',\n\
             \x20       aws_access_key_id=key_id, aws_secret_access_key=secret,\n\
             \x20       config=botocore.config.Config(retries={{'max_attempts': 1}}))\n\
             {code}",
            url = self.url(MOTO_IP),
            ca = self.ca.display(),
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        ok(&out)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// boto3 in the agent: `ec2` and `s3` clients for `region` on the test
/// hosts, the secret key a placeholder (the SDK needs one to sign).
fn boto_prelude(moto: &Moto, region: &str) -> String {
    format!(
        "import os, boto3, botocore\n\
         from botocore.exceptions import ClientError\n\
         assert os.environ['AWS_ACCESS_KEY_ID'].startswith('agentguard-placeholder:')\n\
         os.environ['AWS_SECRET_ACCESS_KEY'] = 'placeholder-secret'\n\
         cfg = botocore.config.Config(retries={{'max_attempts': 1}}, s3={{'addressing_style': 'path'}})\n\
         ec2 = boto3.client('ec2', region_name='{region}', endpoint_url='{ec2}', config=cfg)\n\
         s3 = boto3.client('s3', region_name='{region}', endpoint_url='{s3}', config=cfg)\n\
         def status(call):\n\
         \x20   try:\n\
         \x20       call()\n\
         \x20       return 200\n\
         \x20   except ClientError as e:\n\
         \x20       return e.response['ResponseMetadata']['HTTPStatusCode']\n",
        ec2 = moto.url(EC2),
        s3 = moto.url(S3),
    )
}

/// moto, and a daemon whose policy is the `aws-inventory` credential (the
/// keys of moto's `agentguard-base` user, for ec2 and s3 in eu-west-1,
/// from files) and `tools`. Keeps the keys, to check that neither leaks.
/// Fields drop in order: the daemon, then moto, then their files.
struct BaseKeys {
    daemon: Daemon,
    moto: Moto,
    id: String,
    secret: String,
    _dir: tempfile::TempDir,
}

impl BaseKeys {
    fn start(tools: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("agentguard test upstream CA", dir.path());
        let moto = Moto::start(dir.path(), &ca);
        let base = &moto.keys["agentguard-base"];
        let (id, secret) = (
            base["id"].as_str().unwrap().to_owned(),
            base["secret"].as_str().unwrap().to_owned(),
        );
        let key_file = secret_file(dir.path(), "aws-key-id", &id);
        let secret_path = secret_file(dir.path(), "aws-secret", &secret);
        let policy = format!(
            "[[credential]]\nid = \"aws-inventory\"\n\
             inject = {{ aws_sigv4 = {{ regions = [\"eu-west-1\"], services = [\"ec2\", \"s3\"] }} }}\n\
             placeholder_env = \"AWS_ACCESS_KEY_ID\"\n\
             [credential.source.aws]\naccess_key_id = {{ file = \"{key}\" }}\nsecret_access_key = {{ file = \"{secret}\" }}\n\n\
             {tools}",
            key = key_file.display(),
            secret = secret_path.display(),
        );
        let daemon = Daemon::builder(&[AGENT])
            .policy(&policy)
            .upstream_ca(&ca.pem_path)
            .start();
        Self {
            daemon,
            moto,
            id,
            secret,
            _dir: dir,
        }
    }
}

fn run_agent(daemon: &Daemon, cmd: &[&str]) -> std::process::Output {
    daemon
        .exec_resolving_many(AGENT, &[(EC2, MOTO_IP), (S3, MOTO_IP)], cmd)
        .output()
        .unwrap()
}

#[test]
fn boto3_and_the_aws_cli_with_placeholder_keys_are_signed_again() {
    require_root();
    let base = BaseKeys::start(&format!(
        "[[tool]]\nname = \"aws.ec2.read\"\nhost = \"{EC2}\"\nmethods = [\"POST\"]\npaths = [\"/\"]\ncredential = \"aws-inventory\"\naws_actions = [\"ec2:Describe*\"]\n\n\
         [[tool]]\nname = \"aws.s3.reports\"\nhost = \"{S3}\"\nmethods = [\"GET\", \"HEAD\"]\npaths = [\"/reports\", \"/reports/2024/*\"]\ncredential = \"aws-inventory\"\naws_actions = [\"s3:GetObject\", \"s3:ListBucket\"]\n",
    ));
    let (moto, daemon) = (&base.moto, &base.daemon);
    let (id, secret) = (base.id.as_str(), base.secret.as_str());

    // moto verifies signatures: the placeholder key is no key, the real key
    // with the placeholder secret does not verify, the real pair does.
    let direct = moto.direct(&format!(
        "for key_id, secret in [('agentguard-placeholder:aws-inventory', 'placeholder-secret'), ('{id}', 'placeholder-secret'), ('{id}', '{secret}')]:\n\
         \x20   try:\n\
         \x20       client('ec2', key_id, secret).describe_regions()\n\
         \x20       print('ok')\n\
         \x20   except ClientError as e:\n\
         \x20       print(e.response['Error']['Code'])\n"
    ));
    assert_eq!(
        direct, "AuthFailure\nAuthFailure\nok\n",
        "moto's authentication is on"
    );

    let script = format!(
        "{prelude}\
         print('regions', len(ec2.describe_regions()['Regions']) > 0)\n\
         print('instances', ec2.describe_instances()['Reservations'])\n\
         print('run', status(lambda: ec2.run_instances(ImageId='ami-12c6146b', MinCount=1, MaxCount=1)))\n\
         print('q1', s3.get_object(Bucket='reports', Key='2024/q1.csv')['Body'].read().decode().splitlines()[1])\n\
         print('head', s3.head_object(Bucket='reports', Key='2024/q1.csv')['ContentLength'])\n\
         print('payroll', status(lambda: s3.get_object(Bucket='reports', Key='private/payroll.csv')))\n\
         print('put', status(lambda: s3.put_object(Bucket='reports', Key='2024/new.csv', Body=b'x')))\n\
         print('over 16 MiB', status(lambda: ec2.describe_regions(RegionNames=['r' * (17 << 20)])))\n",
        prelude = boto_prelude(moto, "eu-west-1")
    );
    let out = run_agent(daemon, &["python3", "-c", &script]);
    let stdout = ok(&out);
    assert_eq!(
        stdout,
        "regions True\ninstances []\nrun 403\nq1 eu,42\nhead 19\npayroll 403\nput 403\nover 16 MiB 400\n",
        "{}",
        text(&out.stderr)
    );

    // Another region: refused by the credential's regions.
    let script = format!(
        "{prelude}print('other region', status(lambda: ec2.describe_regions()))\n",
        prelude = boto_prelude(moto, "us-east-1")
    );
    assert_eq!(
        ok(&run_agent(daemon, &["python3", "-c", &script])),
        "other region 403\n"
    );

    // The AWS CLI, unmodified.
    let cli = run_agent(
        daemon,
        &[
            "sh",
            "-c",
            &format!(
                "AWS_SECRET_ACCESS_KEY=placeholder-secret aws --region eu-west-1 --endpoint-url {} ec2 describe-regions --query 'length(Regions) > `0`'",
                moto.url(EC2)
            ),
        ],
    );
    assert_eq!(ok(&cli).trim(), "true", "{}", text(&cli.stderr));

    // RunInstances never reached moto: no instance exists.
    let instances = moto.direct(&format!(
        "print(client('ec2', '{id}', '{secret}').describe_instances()['Reservations'])\n"
    ));
    assert_eq!(instances, "[]\n");

    // The record: each call with the credential id, the action in the
    // reason, the refusals with theirs; no key anywhere.
    let events = daemon.wait_for_events("the aws requests", |e| {
        e.iter().filter(|e| e["kind"] == "request").count() >= 10
    });
    let requests: Vec<_> = events.iter().filter(|e| e["kind"] == "request").collect();
    let run = requests
        .iter()
        .find(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("ec2:RunInstances"))
        })
        .expect("the refused RunInstances is recorded with its action");
    assert_eq!(run["decision"], "deny");
    // A signed body too large to re-sign is refused, saying why (its
    // declared length is over the bound: it is drained, never kept).
    assert!(
        requests.iter().any(|e| e["decision"] == "refuse"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("signed body is larger than"))),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .filter(|e| e["decision"] == "allow")
            .all(|e| e["credential_id"] == "aws-inventory"
                && e["reason"].as_str().unwrap().contains("AWS action"))
    );
    let everything = format!("{events:?}{}", daemon.log());
    assert!(!everything.contains(secret), "the secret key leaked");
    let visible = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!visible.contains(secret) && !visible.contains(id));
}

/// S3 uploads larger than what agentguard reads whole (a signed body, 16
/// MiB): boto3 sends them unsigned over TLS, as aws-chunked with a
/// checksum trailer (PutObject) or as parts (multipart upload), and
/// agentguard re-signs each request's head while the body streams
/// through. What moto stores is what the agent sent, byte for byte.
#[test]
fn s3_uploads_larger_than_a_signed_body_stream_through_signed_again() {
    require_root();
    let base = BaseKeys::start(&format!(
        "[[tool]]\nname = \"aws.s3.uploads\"\nhost = \"{S3}\"\nmethods = [\"PUT\", \"POST\", \"GET\"]\npaths = [\"/reports/uploads/*\"]\ncredential = \"aws-inventory\"\naws_actions = [\"s3:PutObject\", \"s3:GetObject\"]\n",
    ));
    let (moto, daemon) = (&base.moto, &base.daemon);
    let (id, secret) = (base.id.as_str(), base.secret.as_str());
    // 20 MiB, over the 16 MiB a signed body may have; in 8 MiB parts for
    // the multipart upload.
    let script = format!(
        "{prelude}\
         import hashlib, io\n\
         from boto3.s3.transfer import TransferConfig\n\
         data = os.urandom(20 << 20)\n\
         want = hashlib.sha256(data).hexdigest()\n\
         def stored(key):\n\
         \x20   got = s3.get_object(Bucket='reports', Key=key)['Body'].read()\n\
         \x20   return len(got), hashlib.sha256(got).hexdigest() == want\n\
         s3.put_object(Bucket='reports', Key='uploads/whole.bin', Body=data)\n\
         print('put', *stored('uploads/whole.bin'))\n\
         parts = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=2)\n\
         s3.upload_fileobj(io.BytesIO(data), 'reports', 'uploads/parts.bin', Config=parts)\n\
         print('multipart', *stored('uploads/parts.bin'))\n\
         print('sha256', want)\n",
        prelude = boto_prelude(moto, "eu-west-1")
    );
    let out = run_agent(daemon, &["python3", "-c", &script]);
    let stdout = ok(&out);
    let size = 20 << 20;
    assert!(
        stdout.starts_with(&format!("put {size} True\nmultipart {size} True\nsha256 ")),
        "{stdout}{}",
        text(&out.stderr)
    );
    // Stored at moto as sent: read there with the real keys, not through
    // agentguard.
    let want = stdout.lines().last().unwrap().trim_start_matches("sha256 ");
    let direct = moto.direct(&format!(
        "import hashlib\n\
         s3 = client('s3', '{id}', '{secret}')\n\
         for key in ['uploads/whole.bin', 'uploads/parts.bin']:\n\
         \x20   print(hashlib.sha256(s3.get_object(Bucket='reports', Key=key)['Body'].read()).hexdigest())\n"
    ));
    assert_eq!(direct, format!("{want}\n{want}\n"));

    // Each request recorded as allowed, with its action: the upload's
    // PutObject, the parts' (UploadPart is PutObject's), the reads.
    let events = daemon.wait_for_events("the upload requests", |e| {
        e.iter()
            .filter(|e| e["kind"] == "request" && e["decision"] == "allow")
            .count()
            >= 7
    });
    let requests: Vec<_> = events.iter().filter(|e| e["kind"] == "request").collect();
    assert!(
        requests
            .iter()
            .all(|e| e["decision"] == "allow"
                && e["reason"].as_str().unwrap().contains("AWS action")),
        "{requests:?}"
    );
    let uploaded: u64 = requests
        .iter()
        .filter(|e| e["method"] == "PUT")
        .map(|e| e["bytes_in"].as_u64().unwrap())
        .sum();
    assert!(
        uploaded >= 2 * size,
        "{uploaded} bytes uploaded: {requests:?}"
    );
    let everything = format!("{events:?}{}", daemon.log());
    assert!(!everything.contains(secret), "the secret key leaked");
}

#[test]
fn sts_assume_role_narrows_the_keys_to_the_agent() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let moto = Moto::start(dir.path(), &ca);
    let user = &moto.keys["role-only"];
    let (id, secret) = (
        user["id"].as_str().unwrap(),
        user["secret"].as_str().unwrap(),
    );
    let role = moto.keys["role_arn"].as_str().unwrap();
    // The base user may only assume the role: anything the agent does is
    // the role's session.
    let direct = moto.direct(&format!(
        "try:\n\
         \x20   client('ec2', '{id}', '{secret}').describe_regions()\n\
         except ClientError as e:\n\
         \x20   print(e.response['Error']['Code'])\n"
    ));
    assert!(
        direct.contains("AccessDenied") || direct.contains("UnauthorizedOperation"),
        "{direct}"
    );

    let key_file = secret_file(dir.path(), "aws-key-id", id);
    let secret_path = secret_file(dir.path(), "aws-secret", secret);
    let policy = format!(
        "[[credential]]\nid = \"aws-inventory\"\n\
         inject = {{ aws_sigv4 = {{ regions = [\"eu-west-1\"], services = [\"ec2\"] }} }}\n\
         placeholder_env = \"AWS_ACCESS_KEY_ID\"\n\
         [credential.source.aws]\naccess_key_id = {{ file = \"{key}\" }}\nsecret_access_key = {{ file = \"{secret}\" }}\n\
         assume_role = {{ role_arn = \"{role}\", sts_endpoint = \"{sts}\", sts_region = \"eu-west-1\" }}\n\n\
         [[tool]]\nname = \"aws.ec2.read\"\nhost = \"{EC2}\"\nmethods = [\"POST\"]\npaths = [\"/\"]\ncredential = \"aws-inventory\"\naws_actions = [\"ec2:DescribeInstances\", \"ec2:DescribeRegions\"]\n",
        key = key_file.display(),
        secret = secret_path.display(),
        sts = moto.url(MOTO_IP),
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    let script = format!(
        "{prelude}\
         for _ in range(3):\n\
         \x20   print(len(ec2.describe_regions()['Regions']) > 0, ec2.describe_instances()['Reservations'])\n",
        prelude = boto_prelude(&moto, "eu-west-1")
    );
    let out = run_agent(&daemon, &["python3", "-c", &script]);
    assert_eq!(ok(&out), "True []\n".repeat(3), "{}", text(&out.stderr));
    // One AssumeRole served the six calls.
    let log = daemon.log();
    assert_eq!(
        log.matches("assumed an AWS role for the agent").count(),
        1,
        "{log}"
    );
    assert!(!log.contains(secret));
}
