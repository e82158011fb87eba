//! The real app under Xvfb: a scripted run steps one window micro-batch by micro-batch, trains a
//! few optimizer steps, saves a screenshot and exits. Checks that training advanced and that the
//! screenshot is a non-empty PNG of the window's size. Needs Xvfb (`apt-get install xvfb xauth`);
//! where it is missing the test says so and checks nothing else (CI installs it).

use std::process::Command;

#[test]
fn app_trains_and_takes_a_screenshot_under_xvfb() {
    if Command::new("xvfb-run").arg("--help").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must install xvfb and xauth (see .ci/run)");
        println!("skipped: Xvfb missing (sudo apt-get install xvfb xauth) - the app test did not run");
        return;
    }
    let tmp = tempfile::Builder::new().prefix("gradscope-app-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let shot = dir.join("app.png");
    let out = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_gradscope"))
        .args(["app", "--step-first-window", "--exit-after-steps", "3", "--screenshot"])
        .arg(&shot)
        .args(["--n_embd", "32", "--n_layer", "1", "--n_head", "2", "--block_size", "32", "--micro_batch", "4"])
        .args(["--accum_steps", "3", "--eval_every", "2", "--eval_windows", "16", "--out_dir"])
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the app failed");
    let steps: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("steps "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the app reports the steps it trained");
    assert!(steps >= 3, "training advanced to step {steps}");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 800), "screenshot size");
    let px = &buf[..info.buffer_size()];
    let distinct: std::collections::HashSet<&[u8]> = px.chunks(4).step_by(97).collect();
    assert!(distinct.len() > 20, "the screenshot shows more than a blank window ({} colours)", distinct.len());

    // the CNN with BatchNorm on the 8x8 digits, through the same scripted path
    let shot = dir.join("cnn.png");
    let out = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_gradscope"))
        .args(["app", "--step-first-window", "--exit-after-steps", "3", "--screenshot"])
        .arg(&shot)
        .args(["--model", "cnn", "--norm", "batch", "--dataset", "digits", "--micro_batch", "8", "--accum_steps", "2", "--out_dir"])
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the app failed with the CNN");
    let steps: usize = stdout.lines().find_map(|l| l.strip_prefix("steps ")).and_then(|n| n.trim().parse().ok()).unwrap();
    assert!(steps >= 3, "CNN training advanced to step {steps}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

/// The window view under Xvfb: the scripted run steps the first window micro-batch by
/// micro-batch, makes its step by hand and stays paused, so the main area shows the window view;
/// the app reports what that view drew (cards, arrows, the heat map's size, the update ratios)
/// and the screenshot is not blank.
#[test]
fn app_shows_the_window_view_after_stepping_a_window_under_xvfb() {
    if Command::new("xvfb-run").arg("--help").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must install xvfb and xauth (see .ci/run)");
        println!("skipped: Xvfb missing (sudo apt-get install xvfb xauth) - the app test did not run");
        return;
    }
    let tmp = tempfile::Builder::new().prefix("gradscope-window-view-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let shot = dir.join("window.png");
    let out = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_gradscope"))
        .args(["app", "--step-first-window", "--exit-after-steps", "1", "--screenshot"])
        .arg(&shot)
        .args(["--n_embd", "32", "--n_layer", "1", "--n_head", "2", "--block_size", "32", "--micro_batch", "4"])
        .args(["--accum_steps", "3", "--eval_every", "0", "--out_dir"])
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the app failed");
    let drawn = stdout.lines().find(|l| l.starts_with("window view:")).expect("the app reports the window view it drew");
    // the GPT of one layer has 16 named tensors (wte, wpe, 12 in the block, ln_f's two)
    assert_eq!(
        drawn,
        "window view: step 1, 3/3 micro-batches, 3 cards, 3 arrows, heat map 16 tensors x 3, update ratios 16",
        "what the window view drew"
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 800), "screenshot size");
    let distinct: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(4).step_by(97).collect();
    assert!(distinct.len() > 20, "the screenshot shows more than a blank window ({} colours)", distinct.len());
}
