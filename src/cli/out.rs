//! Output of the command line: every line reaches stdout, a terminal or not, and a closed pipe
//! (`gradscope info | head -1`) ends the program quietly with exit code 0.
//!
//! `outln!`/`out!` replace `println!`/`print!` (which panic on a broken pipe); `Progress` draws
//! a progress bar where stdout and stderr are terminals and prints plain progress lines elsewhere
//! (CI logs, `> file`), so nothing printed during a run depends on where it goes.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// `println!` that ends the program quietly when stdout is a closed pipe.
macro_rules! outln {
    () => { $crate::cli::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that ends the program quietly when stdout is a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};

/// Write to stdout. A reader that went away (broken pipe) ends the program with code 0, as it
/// would a program killed by SIGPIPE, without the panic of `println!`; another write error ends
/// it with code 1.
pub fn write(args: fmt::Arguments) {
    if CLOSED.load(Ordering::SeqCst) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        quit_on(e);
    }
}

/// Set once stdout's reader went away while a handler was installed: later output is dropped.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// What to do when stdout's reader goes away (instead of exiting): `train` stops after the
/// current window with a checkpoint, as on Ctrl-C.
static ON_CLOSED: Mutex<Option<fn()>> = Mutex::new(None);

/// From now on a closed stdout calls `handler` and drops the output, instead of ending the
/// program: for work that must save its state first (`train | head`).
pub fn on_closed_pipe(handler: fn()) {
    *ON_CLOSED.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
}

/// Whether stdout's reader went away (with a handler installed).
pub fn pipe_closed() -> bool {
    CLOSED.load(Ordering::SeqCst)
}

/// Flush stdout before exiting (a broken pipe found here is quiet too).
pub fn flush() {
    if CLOSED.load(Ordering::SeqCst) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().flush() {
        quit_on(e);
    }
}

fn quit_on(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        if let Some(handler) = *ON_CLOSED.lock().unwrap_or_else(|e| e.into_inner()) {
            CLOSED.store(true, Ordering::SeqCst);
            handler();
            return;
        }
        std::process::exit(super::EXIT_OK);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(super::EXIT_ERROR);
}

/// Progress of a run over `total` steps: a bar on a terminal; plain lines otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    /// Plain mode: a progress line every this many steps (and at the last); 0 = none.
    every: u64,
    message: Mutex<String>,
}

impl Progress {
    /// A progress bar when stdout and stderr are terminals and `plain` is false; plain progress
    /// lines every 10 steps otherwise.
    pub fn new(total: u64, plain: bool) -> Self {
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = (terminal && !plain).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
                    .expect("a valid template"),
            );
            b
        });
        Self { bar, total, every: 10, message: Mutex::new(String::new()) }
    }

    /// Plain mode: a progress line every `n` steps; 0 = none (when the lines printed through
    /// `line` show the progress themselves).
    pub fn every(mut self, n: u64) -> Self {
        self.every = n;
        self
    }

    /// Start at step `pos` (a resumed run), printing nothing.
    pub fn at(self, pos: u64) -> Self {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
        self
    }

    /// A line of output, above the bar or on its own.
    pub fn line(&self, line: impl fmt::Display) {
        match &self.bar {
            Some(b) => b.suspend(|| outln!("{line}")),
            None => outln!("{line}"),
        }
    }

    /// The figures shown next to the position (the bar's message; the plain progress lines').
    pub fn set_message(&self, message: String) {
        match &self.bar {
            Some(b) => b.set_message(message),
            None => *self.message.lock().expect("not poisoned") = message,
        }
    }

    /// Steps done. Plain mode prints `step N/TOTAL  message` every `every` steps and at the last.
    pub fn set_position(&self, pos: u64) {
        match &self.bar {
            Some(b) => b.set_position(pos),
            None if self.every > 0 && pos > 0 && (pos.is_multiple_of(self.every) || pos == self.total) => {
                let message = self.message.lock().expect("not poisoned");
                outln!("step {pos:>5}/{}  {message}", self.total);
            }
            None => {}
        }
    }

    /// The run finished: the bar stays drawn at its end.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }

    /// The run finished: the bar goes away.
    pub fn clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// The run stopped early: the bar stays drawn where it was.
    pub fn abandon(&self) {
        if let Some(b) = &self.bar {
            b.abandon();
        }
    }
}
