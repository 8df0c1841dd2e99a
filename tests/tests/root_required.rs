//! Without root, privileged tests fail loudly; they never pass by skipping.

use std::process::Command;

use crate::common::{require_root, text};

#[test]
fn privileged_tests_fail_without_root() {
    require_root();
    // Re-run one privileged test of this very binary as nobody.
    let me = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&me)
        .args([
            "--exact",
            "tests::redirect::curl_in_agent_cgroup_is_redirected_and_attributed",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "passed without root:\n{all}");
    assert!(all.contains("must run as root"), "{all}");
    assert!(all.contains("1 failed"), "{all}");
}
