//! `gradscope app` (the default command): the desktop app.

use std::path::PathBuf;

use super::config::profile;
use super::{ConfigFlags, EXIT_OK};

#[derive(clap::Args, Default)]
pub struct AppArgs {
    /// Ignore (and do not write) the settings saved by earlier launches.
    #[arg(long)]
    fresh: bool,
    /// Start paused (to step through the first window by hand).
    #[arg(long)]
    paused: bool,
    /// Scripted run: step the first window micro-batch by micro-batch, then train.
    #[arg(long)]
    step_first_window: bool,
    /// Scripted run: exit after this many optimizer steps.
    #[arg(long)]
    exit_after_steps: Option<usize>,
    /// Scripted run: save a screenshot of the window (PNG) before exiting.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// What the main area shows: the history plots, the window view, or auto (the window view
    /// while paused).
    #[arg(long, value_enum, default_value_t = gradscope::app::state::MainView::Auto)]
    view: gradscope::app::state::MainView,
    /// The first run's config.
    #[command(flatten)]
    config: ConfigFlags,
}

/// The app's own defaults, under the file and the flags: a longer run, evaluated more often, with
/// the per-micro-batch gradient statistics on (the window view and the noise scale).
const APP_PROFILE: &str = "max_steps = 2000\neval_every = 25\ngrad_stats = true";

pub fn run(adapter: &Option<String>, args: AppArgs) -> anyhow::Result<i32> {
    let AppArgs { fresh, paused, step_first_window, exit_after_steps, screenshot, view, config } = args;
    let scripted = exit_after_steps.is_some();
    let cfg = config.load_over(profile(APP_PROFILE))?;
    gradscope::app::run(gradscope::app::AppOptions {
        config: cfg,
        fresh: fresh || scripted,
        exit_after_steps,
        screenshot,
        step_first_window,
        paused,
        view,
        adapter: adapter.clone(),
    })?;
    Ok(EXIT_OK)
}
