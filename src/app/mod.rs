//! The desktop app (eframe on the wgpu renderer). It shares eframe's device with the trainer,
//! which runs on its own thread (`train::live`); the UI never blocks: it drains trainer events
//! each frame, is woken by `request_repaint` when one arrives, and sends `Control`s.

pub mod state;

use std::path::PathBuf;
use std::sync::Arc;

use egui_plot::{Corner, HLine, Legend, Line, Plot, Points, VLine};

use crate::gpu::{Gpu, human_bytes};
use crate::reference::gpt::GptConfig;
use crate::train::TrainConfig;
use crate::train::live::{self, Control, Session};

use state::{AppState, Settings};

/// Options of `gradscope app`.
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// Config overrides for the first run (same keys as `train`).
    pub config: TrainConfig,
    /// Ignore persisted settings (scripted runs).
    pub fresh: bool,
    /// Scripted run: after this many optimizer steps, take a screenshot (if asked) and exit.
    pub exit_after_steps: Option<usize>,
    pub screenshot: Option<PathBuf>,
    /// Scripted run: step the first window micro-batch by micro-batch before training.
    pub step_first_window: bool,
    /// Start paused.
    pub paused: bool,
    /// What the main area shows first (the history, the window view, or auto: the window view
    /// while paused).
    pub view: state::MainView,
    pub adapter: Option<String>,
}

const SETTINGS_KEY: &str = "gradscope-settings";

/// Run the app until its window closes.
pub fn run(opts: AppOptions) -> anyhow::Result<()> {
    // The trainer needs the adapter's own limits and optional features: eframe requests the same
    // device description gradscope's headless runtime uses (gpu::context::eframe_setup).
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_inner_size([1280.0, 800.0]).with_title("gradscope"),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: eframe::egui_wgpu::WgpuConfiguration {
            wgpu_setup: crate::gpu::context::eframe_setup(opts.adapter.clone()),
            ..Default::default()
        },
        persist_window: !opts.fresh,
        ..Default::default()
    };
    eframe::run_native(
        "gradscope",
        native,
        Box::new(move |cc| {
            let rs = cc.wgpu_render_state.as_ref().ok_or("eframe did not create a wgpu device")?;
            let gpu = Gpu::from_render_state(rs);
            let settings = if opts.fresh {
                Settings::from_config(&opts.config)
            } else {
                cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY)).unwrap_or_else(|| Settings::from_config(&opts.config))
            };
            Ok(Box::new(GradscopeApp::new(cc.egui_ctx.clone(), gpu, settings, opts)))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the app failed: {e}"))
}

pub struct GradscopeApp {
    gpu: Gpu,
    state: AppState,
    session: Session,
    opts: AppOptions,
    screenshot_requested: bool,
    screenshot_done: Arc<std::sync::atomic::AtomicBool>,
    stepped_script: bool,
    closing: bool,
    status: String,
    /// What the window view drew this frame (the scripted run reports it).
    drawn: Option<String>,
}

impl GradscopeApp {
    fn new(ctx: egui::Context, gpu: Gpu, settings: Settings, opts: AppOptions) -> Self {
        let mut state = AppState::new(settings, opts.config.clone());
        state.set_main_view(opts.view);
        let cfg = state.run_config();
        let wake_ctx = ctx.clone();
        let paused = opts.paused || opts.step_first_window;
        let session = live::spawn(gpu.clone(), cfg, paused, Arc::new(move || wake_ctx.request_repaint()));
        Self {
            gpu,
            state,
            session,
            opts,
            screenshot_requested: false,
            screenshot_done: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stepped_script: false,
            closing: false,
            status: String::new(),
            drawn: None,
        }
    }

    fn send(&self, c: Control) {
        let _ = self.session.controls.send(c);
    }

    fn drain(&mut self) {
        while let Ok(e) = self.session.events.try_recv() {
            self.state.apply(e);
        }
    }

    /// The scripted path used by CI: optionally step one window by hand, train N steps,
    /// screenshot, exit.
    fn script(&mut self, ctx: &egui::Context) {
        if self.opts.step_first_window && !self.stepped_script && self.state.confirmed.is_some() {
            self.stepped_script = true;
            let k = self.state.settings.accum_steps;
            for _ in 0..k {
                self.send(Control::StepMicroBatch);
            }
            self.send(Control::StepOptimizer);
            // exit after that one step: stay paused on the stepped window (the window view)
            if self.opts.exit_after_steps.is_none_or(|n| n > 1) {
                self.send(Control::Resume);
            }
        }
        if let Some(n) = self.opts.exit_after_steps {
            if self.state.step >= n && !self.screenshot_requested {
                self.screenshot_requested = true;
                self.send(Control::Pause);
                match self.opts.screenshot.clone() {
                    Some(path) => {
                        let done = self.screenshot_done.clone();
                        ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::ScreenshotCallback::new(move |img| {
                            if let Err(e) = save_png(&path, &img) {
                                eprintln!("error: screenshot {}: {e}", path.display());
                            } else {
                                println!("screenshot {} ({}x{})", path.display(), img.size[0], img.size[1]);
                            }
                            done.store(true, std::sync::atomic::Ordering::SeqCst);
                        })));
                    }
                    None => self.screenshot_done.store(true, std::sync::atomic::Ordering::SeqCst),
                }
            }
            if self.screenshot_done.load(std::sync::atomic::Ordering::SeqCst) && !self.closing {
                self.closing = true;
                println!("steps {}", self.state.step);
                if let Some(d) = &self.drawn {
                    println!("{d}");
                }
                self.send(Control::Shutdown);
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }
}

/// Write an egui image as PNG.
pub fn save_png(path: &std::path::Path, img: &egui::ColorImage) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(f, img.size[0] as u32, img.size[1] as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    let bytes: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    w.write_image_data(&bytes)?;
    Ok(())
}

impl eframe::App for GradscopeApp {
    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if !self.opts.fresh {
            eframe::set_value(storage, SETTINGS_KEY, &self.state.settings);
        }
    }

    fn on_exit(&mut self) {
        let _ = self.session.controls.send(Control::Shutdown);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.drain();
        self.script(&ctx);
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui));
        egui::Panel::left("controls").default_size(300.0).show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                self.controls(ui);
                ui.separator();
                self.window_panel(ui);
            });
        });
        self.drawn = None;
        egui::CentralPanel::default().show(ui, |ui| self.main_area(ui));
    }
}

impl GradscopeApp {
    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("gradscope");
            ui.label(format!("{} ({:?})", self.gpu.summary.name, self.gpu.kind));
            ui.separator();
            let status = if self.state.finished {
                "finished"
            } else if self.state.paused {
                "paused"
            } else {
                "training"
            };
            ui.label(format!("step {} - {status}", self.state.step));
            ui.separator();
            if ui.button(if self.state.paused { "Resume" } else { "Pause" }).clicked() {
                self.send(self.state.toggle_pause());
            }
            if ui.button("Reset").on_hover_text("new run with the settings on the left").clicked() {
                let c = self.state.reset();
                self.send(c);
            }
            if ui.button("Save checkpoint").clicked() {
                let p = PathBuf::from(&self.state.base_config.out_dir).join(format!("app-step{}.safetensors", self.state.step));
                self.send(Control::Save(p));
            }
            if ui.button("Export CSV").clicked() {
                let p = PathBuf::from(&self.state.base_config.out_dir).join("app-history.csv");
                self.status = match std::fs::create_dir_all(&self.state.base_config.out_dir).and_then(|_| std::fs::write(&p, self.state.history_csv())) {
                    Ok(()) => format!("wrote {}", p.display()),
                    Err(e) => format!("error writing {}: {e}", p.display()),
                };
            }
            if ui.button("Export PNG").clicked() {
                let p = PathBuf::from(&self.state.base_config.out_dir).join(format!("app-step{}.png", self.state.step));
                self.status = format!("saving {}", p.display());
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::ScreenshotCallback::new(move |img| {
                    if let Err(e) = save_png(&p, &img) {
                        eprintln!("error: {e}");
                    }
                })));
            }
            if !self.status.is_empty() {
                ui.label(&self.status);
            }
        });
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        ui.heading("Batch");
        let mut b = self.state.settings.micro_batch;
        let mut k = self.state.settings.accum_steps;
        ui.horizontal(|ui| {
            ui.label("micro-batch B");
            ui.add(egui::DragValue::new(&mut b).range(1..=1024));
        });
        ui.horizontal(|ui| {
            ui.label("accumulation K");
            ui.add(egui::DragValue::new(&mut k).range(1..=256));
        });
        if let Some(c) = self.state.set_micro_batch(b) {
            self.send(c);
        }
        if let Some(c) = self.state.set_accum_steps(k) {
            self.send(c);
        }
        let t = self.state.base_config.block_size;
        let e = b * k;
        if self.state.base_config.model == crate::train::config::ModelKind::Cnn {
            ui.label(format!("B x K = {b} x {k} = E {e} images per step"));
        } else {
            ui.label(format!("B x K = {b} x {k} = E {e} sequences = {} tokens per step", e * t));
        }
        if self.state.base_config.model == crate::train::config::ModelKind::Gpt {
            let mut ck = self.state.settings.checkpoint_activations;
            ui.checkbox(&mut ck, "activation checkpointing")
                .on_hover_text("Keep only each block's input; recompute the block in backward. Less activation memory, one more forward pass; same gradients.");
            if let Some(c) = self.state.set_activation_checkpointing(ck) {
                self.send(c);
            }
            use crate::gpu::Precision;
            let mut prec = self.state.settings.precision;
            let has_f16 = self.gpu.has_f16();
            ui.horizontal(|ui| {
                ui.label("activations");
                ui.radio_value(&mut prec, Precision::F32, "f32");
                ui.add_enabled(has_f16, egui::RadioButton::new(prec == Precision::F16, "f16 (mixed)"))
                    .on_hover_text("f16 activations and activation gradients; f32 weights, gradients and AdamW state; dynamic loss scaling (divide by the window count, then scale; unscale once at the step)")
                    .on_disabled_hover_text("this adapter has no SHADER_F16")
                    .clicked()
                    .then(|| prec = Precision::F16);
            });
            if let Some(c) = self.state.set_precision(prec) {
                self.send(c);
            }
        }
        ui.heading("Optimizer");
        let mut lr = self.state.settings.lr;
        let mut clip = self.state.settings.grad_clip;
        ui.horizontal(|ui| {
            ui.label("learning rate");
            ui.add(egui::DragValue::new(&mut lr).speed(1e-4).range(1e-6..=1.0).max_decimals(6));
        });
        ui.horizontal(|ui| {
            ui.label("clip (global norm)");
            ui.add(egui::DragValue::new(&mut clip).speed(0.01).range(0.0..=100.0));
        });
        if let Some(c) = self.state.set_lr(lr) {
            self.send(c);
        }
        if let Some(c) = self.state.set_grad_clip(clip) {
            self.send(c);
        }
        let pending = self.state.pending();
        if pending.is_empty() {
            ui.label("settings in effect");
        } else {
            ui.colored_label(egui::Color32::YELLOW, format!("pending: {} (B and K apply at the next optimizer step)", pending.join(", ")));
        }
        ui.collapsing("Model and data (new run)", |ui| {
            use crate::reference::cnn_model::NormKind;
            use crate::train::config::ModelKind;
            let s = &mut self.state.settings;
            ui.horizontal(|ui| {
                ui.radio_value(&mut s.model, ModelKind::Gpt, "GPT");
                ui.radio_value(&mut s.model, ModelKind::Cnn, "CNN");
            });
            if s.model == ModelKind::Cnn {
                ui.horizontal(|ui| {
                    ui.radio_value(&mut s.norm, NormKind::Group, "GroupNorm");
                    ui.radio_value(&mut s.norm, NormKind::Batch, "BatchNorm");
                });
                ui.horizontal(|ui| {
                    ui.radio_value(&mut s.dataset, crate::data::images::Dataset::Mnist, "MNIST");
                    ui.radio_value(&mut s.dataset, crate::data::images::Dataset::Digits, "8x8 digits");
                });
                ui.label("BatchNorm's statistics come from each micro-batch: under accumulation they drift.");
            }
            ui.label("GPT (char-level), pre-LN, tied lm_head");
            ui.horizontal(|ui| {
                ui.label("layers");
                ui.add(egui::DragValue::new(&mut s.n_layer).range(1..=12));
                ui.label("heads");
                ui.add(egui::DragValue::new(&mut s.n_head).range(1..=16));
            });
            ui.horizontal(|ui| {
                ui.label("channels");
                ui.add(egui::DragValue::new(&mut s.n_embd).range(8..=1024));
                ui.label("block");
                ui.add(egui::DragValue::new(&mut s.block_size).range(2..=1024));
            });
            ui.horizontal(|ui| {
                ui.label("text");
                ui.text_edit_singleline(&mut s.data);
            });
            ui.horizontal(|ui| {
                ui.label("steps");
                ui.add(egui::DragValue::new(&mut s.max_steps).range(1..=1_000_000));
                ui.label("eval every");
                ui.add(egui::DragValue::new(&mut s.eval_every).range(0..=10_000));
            });
            if ui.button("Start new run").clicked() {
                let c = self.state.reset();
                self.send(c);
            }
        });
        if let Some(d) = &self.state.derived {
            ui.separator();
            if self.state.base_config.model == crate::train::config::ModelKind::Cnn {
                ui.label(format!("CNN ({:?} norm): {} parameters, {} classes", self.state.base_config.norm, d.params, d.vocab_size));
            } else {
                ui.label(format!("{} parameters, vocabulary {}", d.params, d.vocab_size));
            }
        }
        ui.collapsing("Kernel profile", |ui| {
            if ui.button("profile one micro-batch").on_hover_text("device time of every kernel of one micro-batch (timestamp queries), between windows").clicked() {
                self.send(Control::ProfileKernels);
            }
            if let Some((step, b, kernels)) = &self.state.profile {
                let total: f64 = kernels.iter().map(|k| k.1).sum();
                ui.label(format!("after step {step}, B {b}: {:.1} ms", total * 1e3));
                egui::Grid::new("kernel profile").striped(true).show(ui, |ui| {
                    for (name, secs) in kernels.iter().take(12) {
                        ui.label(name);
                        ui.label(format!("{:.2} ms", secs * 1e3));
                        ui.label(format!("{:.1}%", 100.0 * secs / total.max(1e-12)));
                        ui.end_row();
                    }
                });
            }
        });
        if !self.state.health.is_empty() {
            ui.separator();
            ui.colored_label(egui::Color32::LIGHT_RED, "Gradient health");
            for (s, h) in self.state.health.iter().rev().take(6) {
                ui.label(format!("step {s}: {h}"));
            }
        }
        ui.separator();
        for l in self.state.log.iter().rev().take(6) {
            ui.label(l);
        }
    }

    /// The accumulation window, micro-batch by micro-batch.
    fn window_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading("Accumulation window");
        ui.horizontal(|ui| {
            ui.add_enabled_ui(self.state.paused, |ui| {
                if ui.button("one micro-batch").clicked() {
                    self.send(Control::StepMicroBatch);
                }
                if ui.button("optimizer step").clicked() {
                    self.send(Control::StepOptimizer);
                }
            });
        });
        if !self.state.paused {
            ui.label("pause to step through a window");
        }
        let w = &self.state.window;
        let k = if w.k > 0 { w.k } else { self.state.confirmed.map_or(self.state.settings.accum_steps, |c| c.accum_steps) };
        if w.step == 0 || w.step > self.state.step {
            ui.label(format!("window of step {}: {}/{k} micro-batches", self.state.step + 1, w.done()));
        } else {
            let how = if w.by_hand { "stepped by hand" } else { "run by the loop" };
            ui.label(format!("last window, {how}: step {} ({} micro-batches)", w.step, w.done()));
        }
        // the strip of K cells
        let (rect, _) = ui.allocate_exact_size(egui::vec2(ui.available_width().min(280.0), 18.0), egui::Sense::hover());
        let cw = rect.width() / k.max(1) as f32;
        for j in 0..k {
            let filled = w.cells.get(j).is_some_and(|c| c.is_some());
            let r = egui::Rect::from_min_size(rect.min + egui::vec2(j as f32 * cw, 0.0), egui::vec2(cw - 2.0, rect.height()));
            ui.painter().rect_filled(r, 2.0, if filled { egui::Color32::from_rgb(80, 160, 90) } else { egui::Color32::from_gray(60) });
        }
        egui::Grid::new("micro").striped(true).show(ui, |ui| {
            ui.label("#");
            ui.label("loss");
            ui.label("items");
            ui.label("|g_k| / c_k").on_hover_text("norm of the micro-batch's mean gradient (its summed gradient over its counted items)");
            ui.label("cos(g_k, G_k-1)").on_hover_text("cosine with the sum of the micro-batches before it");
            ui.end_row();
            for c in w.cards().into_iter().flatten() {
                ui.label(format!("{}", c.index + 1));
                ui.label(format!("{:.4}", c.loss));
                ui.label(format!("{:.0}", c.count));
                ui.label(fmt_opt(c.mean_grad_norm, 4));
                ui.label(fmt_opt(c.cos_running, 3));
                ui.end_row();
            }
        });
        if let Some(rep) = w.applied.as_ref().filter(|r| r.metrics.step == w.step) {
            let m = &rep.metrics;
            ui.label(format!(
                "step {}: global norm {:.3}{}, loss {:.4}",
                m.step,
                m.grad_norm,
                if m.clipped { format!(" -> clipped to {}", self.state.confirmed.map_or(0.0, |c| c.grad_clip)) } else { " (not clipped)".into() },
                m.train_loss
            ));
        }
        ui.label("the window view (main area) shows the cards, the gradients adding up, the per-tensor heat map and the step");
    }

    /// The main area's choice: the history plots or the window view.
    fn main_area(&mut self, ui: &mut egui::Ui) {
        use state::MainView;
        ui.horizontal(|ui| {
            let mut v = self.state.main_view;
            ui.selectable_value(&mut v, MainView::Auto, "auto").on_hover_text("the window view while paused, the history while training");
            ui.selectable_value(&mut v, MainView::History, "history");
            ui.selectable_value(&mut v, MainView::Window, "window");
            self.state.set_main_view(v);
        });
        ui.separator();
        match self.state.shown_view() {
            MainView::Window => {
                egui::ScrollArea::vertical().show(ui, |ui| self.window_view(ui));
            }
            _ => self.plots(ui),
        }
    }

    /// The window view: the accumulation window being filled, micro-batch by micro-batch.
    fn window_view(&mut self, ui: &mut egui::Ui) {
        let w = &self.state.window;
        let source = if w.stats.is_none() {
            "no gradient statistics for this window (grad_stats off)"
        } else if w.by_hand {
            "stepped by hand: measured on the host, exact"
        } else {
            "run by the loop: measured on the device"
        };
        if w.k == 0 {
            ui.label("no window yet: pause and press \"one micro-batch\" to fill one");
            self.drawn = Some("window view: empty".into());
            return;
        }
        ui.heading(format!("window of step {}: {}/{} micro-batches", w.step, w.done(), w.k));
        ui.label(source);
        // the cards
        let cards = w.cards();
        egui::ScrollArea::horizontal().id_salt("cards").show(ui, |ui| {
            ui.horizontal(|ui| {
                for (i, c) in cards.iter().enumerate() {
                    egui::Frame::group(ui.style()).show(ui, |ui| {
                        ui.set_width(150.0);
                        ui.vertical(|ui| {
                            ui.strong(format!("micro-batch {}", i + 1));
                            match c {
                                None => {
                                    ui.weak("not run yet");
                                }
                                Some(c) => {
                                    ui.label(format!("loss {:.4}", c.loss));
                                    ui.label(format!("{:.0} counted items", c.count));
                                    ui.label(format!("|g_k| / c_k {}", fmt_opt(c.mean_grad_norm, 4)));
                                    ui.label(format!("cos to sum so far {}", fmt_opt(c.cos_running, 3)));
                                    ui.label(format!("cos to final {}", fmt_opt(c.cos_final, 3)));
                                }
                            }
                        });
                    });
                }
            });
        });
        // room for the scroll bar
        let wdt = ui.available_width() / 2.0 - 20.0;
        let h = 220.0;
        let run = w.running_mean_norms();
        let step_norm = w.step_norm();
        let arrows = w.arrows();
        let heat = w.heat();
        egui::Grid::new("window view").num_columns(2).show(ui, |ui| {
            ui.vertical(|ui| {
                ui.label("running mean gradient |G_k| / (c_1 + .. + c_k) converging to the step's");
                let mut plot = Plot::new("running mean norm")
                    .width(wdt)
                    .height(h)
                    .legend(Legend::default().position(Corner::RightTop).follow_insertion_order(true))
                    .x_axis_label("micro-batch")
                    .y_axis_label("norm")
                    .y_axis_min_width(56.0)
                    .include_x(0.5)
                    .include_x(w.k as f64 + 0.5)
                    .include_y(0.0);
                if let Some(top) = state::legend_headroom(&[&run, &[[0.0, 0.0]]], state::legend_fraction(2, h)) {
                    plot = plot.include_y(top);
                }
                plot.show(ui, |p| {
                    p.line(Line::new("running mean", run.clone()).color(SERIES_COLORS[0]));
                    p.points(Points::new("running mean", run.clone()).radius(4.0).color(SERIES_COLORS[0]));
                    if let Some(n) = step_norm {
                        p.hline(HLine::new("step's norm", n).color(SERIES_COLORS[1]));
                    }
                });
            });
            ui.vertical(|ui| {
                ui.label("micro-batch gradients adding up (/ C), in the plane of the final gradient");
                match &arrows {
                    Some(a) => {
                        Plot::new("arrows")
                            .width(wdt)
                            .height(h)
                            .data_aspect(1.0)
                            .legend(Legend::default().position(Corner::LeftTop).follow_insertion_order(true))
                            .x_axis_label("along the final gradient")
                            .y_axis_label("orthogonal")
                            .show(ui, |p| {
                                p.arrows(egui_plot::Arrows::new("g_k / C, head to tail", a.origins.clone(), a.tips.clone()).color(SERIES_COLORS[0]));
                                p.arrows(egui_plot::Arrows::new("the sum (step's gradient)", vec![[0.0, 0.0]], vec![a.sum]).color(SERIES_COLORS[1]).tip_length(14.0));
                                for (k, t) in a.tips.iter().enumerate() {
                                    // unnamed: the micro-batch numbers stay out of the legend
                                    p.text(egui_plot::Text::new("", egui_plot::PlotPoint::new(t[0], t[1]), format!("{}", k + 1)).anchor(egui::Align2::LEFT_BOTTOM));
                                }
                            });
                    }
                    None => {
                        ui.allocate_ui(egui::vec2(wdt, h), |ui| {
                            ui.weak("needs the exact inner products of the micro-batch gradients: step a window by hand");
                        });
                    }
                }
            });
            ui.end_row();
            ui.vertical(|ui| {
                ui.label("|g_k| / c_k per tensor (heat map, log colour scale)");
                match &heat {
                    Some((names, rows)) => heat_map(ui, names, rows, wdt),
                    None => {
                        ui.weak("no per-tensor statistics for this window");
                    }
                }
            });
            ui.vertical(|ui| self.step_box(ui, wdt));
            ui.end_row();
            ui.vertical(|ui| self.noise_plot(ui, wdt, h));
            ui.vertical(|ui| self.what_if_table(ui));
            ui.end_row();
        });
        let w = &self.state.window;
        self.drawn = Some(format!(
            "window view: step {}, {}/{} micro-batches, {} cards, {} arrows, heat map {} tensors x {}, update ratios {}",
            w.step,
            w.done(),
            w.k,
            cards.iter().flatten().count(),
            arrows.as_ref().map_or(0, |a| a.tips.len()),
            heat.as_ref().map_or(0, |h| h.0.len()),
            heat.as_ref().and_then(|h| h.1.first()).map_or(0, |r| r.len()),
            w.applied.as_ref().and_then(|r| r.update_ratios.as_ref()).map_or(0, |u| u.len()),
        ));
    }

    /// At the step: clipped or not, and the update per tensor against its weight.
    fn step_box(&self, ui: &mut egui::Ui, w: f32) {
        let win = &self.state.window;
        let Some(rep) = win.applied.as_ref().filter(|r| r.metrics.step == win.step) else {
            ui.label("the step: after the window's last micro-batch (\"optimizer step\")");
            return;
        };
        let m = &rep.metrics;
        let clip = self.state.confirmed.map_or(0.0, |c| c.grad_clip);
        ui.label(format!(
            "step {}: gradient norm {:.4} {}",
            m.step,
            m.grad_norm,
            if m.clipped { format!("> clip {clip}: clipped to {clip}") } else if clip > 0.0 { format!("<= clip {clip}: not clipped") } else { "(no clipping)".into() }
        ));
        match &rep.update_ratios {
            Some(ur) => {
                ui.label("|update| / |weight| per tensor");
                named_bars(ui, ur, w);
            }
            None => {
                ui.weak("the update per tensor is measured when the step is made by hand");
            }
        }
    }

    /// The smoothed noise scale over steps, with E marked.
    fn noise_plot(&self, ui: &mut egui::Ui, w: f32, h: f32) {
        let e = self.state.confirmed.map_or(self.state.settings.micro_batch * self.state.settings.accum_steps, |c| c.micro_batch * c.accum_steps);
        let pts = &self.state.noise_scale.points;
        ui.label(match pts.last() {
            Some(p) => format!("gradient noise scale B_simple ~ {:.0} samples (SGD assumptions), E = {e}", p[1]),
            None => format!("gradient noise scale B_simple: not measured yet (needs K >= 2 and grad_stats), E = {e}"),
        });
        let mut plot = history_plot("noise scale", w, h, "samples");
        if let Some(top) = state::legend_headroom(&[pts, &[[0.0, e as f64], [0.0, 0.0]]], state::legend_fraction(2, h)) {
            plot = plot.include_y(top);
        }
        plot.include_y(0.0).show(ui, |p| {
            p.line(Line::new("B_simple", pts.clone()).color(SERIES_COLORS[0]));
            p.hline(HLine::new(format!("E = {e}"), e as f64).color(SERIES_COLORS[1]));
        });
    }

    /// The same E as other B x K: memory from the memory model, time per step from the speed
    /// measured in this session.
    fn what_if_table(&self, ui: &mut egui::Ui) {
        use crate::model::memory::MemoryOptions;
        let Some(c) = self.state.confirmed else { return };
        let e = c.micro_batch * c.accum_steps;
        let cfg = &self.state.base_config;
        let spec = self.memory_spec();
        let o = MemoryOptions {
            checkpoint_activations: c.checkpoint_activations,
            precision: c.precision,
            kernels: self.gpu.kernels().matmul(),
            limits: crate::model::layout::SlabLimits::of(&self.gpu),
            vocab_chunk: cfg.vocab_chunk,
            grad_stats: cfg.grad_stats,
            dropout: cfg.dropout > 0.0,
        };
        let items = if cfg.model == crate::train::config::ModelKind::Cnn { 1.0 } else { cfg.block_size as f64 };
        let rows = state::what_if(e, items, c.micro_batch, &self.state.speed, |b, k| spec.predict(b, k, 0, o).total());
        ui.label(format!("what if: E = {e} as other B x K"));
        egui::Grid::new("what if").striped(true).show(ui, |ui| {
            ui.strong("B");
            ui.strong("K");
            ui.strong("memory");
            ui.strong("s / step");
            ui.end_row();
            for r in rows.iter().take(16) {
                let mark = if r.current { " (now)" } else { "" };
                ui.label(format!("{}{mark}", r.micro_batch));
                ui.label(format!("{}", r.accum_steps));
                ui.label(human_bytes(r.bytes));
                ui.label(match r.step_s {
                    Some(t) if r.measured => format!("{t:.2} measured"),
                    Some(t) => format!("~{t:.2} estimated"),
                    None => "-".into(),
                });
                ui.end_row();
            }
        });
        ui.weak("time: measured per B while training; other B take the nearest measured B's items per second");
    }

    /// The memory model's description of the current run.
    fn memory_spec(&self) -> crate::model::memory::ModelSpec {
        use crate::model::memory::ModelSpec;
        let c = &self.state.base_config;
        let vocab = self.state.derived.as_ref().map_or(65, |d| d.vocab_size);
        match c.model {
            crate::train::config::ModelKind::Gpt => ModelSpec::Gpt(GptConfig {
                vocab_size: vocab, block_size: c.block_size, n_layer: c.n_layer, n_head: c.n_head, n_embd: c.n_embd,
            }),
            crate::train::config::ModelKind::Cnn => {
                let side = if c.dataset == crate::data::images::Dataset::Mnist { 28 } else { 8 };
                ModelSpec::Cnn(crate::reference::cnn_model::CnnConfig::new(side, side, vocab, c.norm))
            }
        }
    }

    fn plots(&mut self, ui: &mut egui::Ui) {
        let h = (ui.available_height() / 3.0 - 30.0).max(120.0);
        let wdt = ui.available_width() / 2.0 - 8.0;
        egui::Grid::new("plots").num_columns(2).show(ui, |ui| {
            let lines = self.state.loss_lines();
            let log = self.state.settings.log_loss;
            ui.vertical(|ui| {
                ui.horizontal(|ui| {
                    ui.label("loss");
                    let mut on = log;
                    ui.checkbox(&mut on, "log scale").on_hover_text("the loss axis in powers of ten");
                    self.state.set_log_loss(on);
                });
                let headroom = state::legend_headroom(&[&lines[0].1, &lines[1].1, &lines[2].1], state::legend_fraction(3, h));
                let mut plot = history_plot("loss", wdt, h, if log { "loss (log scale)" } else { "loss" });
                if let Some(top) = headroom {
                    plot = plot.include_y(top);
                }
                if log {
                    plot = plot.y_axis_formatter(|m, _| format!("{:.3}", 10f64.powf(m.value)));
                }
                plot.show(ui, |p| {
                    let [micro, step, val] = lines;
                    p.line(Line::new(micro.0, micro.1).color(egui::Color32::from_gray(140)));
                    p.line(Line::new(step.0, step.1).color(SERIES_COLORS[0]));
                    // drawn (empty) before the first evaluation too: the legend does not jump
                    p.line(Line::new(val.0, val.1.clone()).color(SERIES_COLORS[1]));
                    p.points(Points::new(val.0, val.1).radius(3.0).color(SERIES_COLORS[1]));
                });
            });
            let clip = self.state.confirmed.map(|c| c.grad_clip).filter(|c| *c > 0.0);
            plot_cell(ui, "global grad norm (before clip)", wdt, h, "|g|", &[&self.state.grad_norm.points], 2, |p| {
                p.line(Line::new("|g|", self.state.grad_norm.points.clone()).color(SERIES_COLORS[0]));
                if let Some(c) = clip {
                    p.hline(HLine::new("clip", c).color(egui::Color32::from_gray(150)));
                }
            });
            ui.end_row();
            // two axes of their own: the learning rate (~1e-3) would lie flat at 0 beside the
            // update ratio
            ui.vertical(|ui| {
                let half = (h - 24.0) / 2.0;
                plot_cell(ui, "learning rate", wdt, half, "lr", &[&self.state.lr.points], 1, |p| {
                    p.line(Line::new("lr", self.state.lr.points.clone()).color(SERIES_COLORS[0]));
                });
                plot_cell(ui, "|update| / |grad|", wdt, half, "ratio", &[&self.state.update_ratio.points], 1, |p| {
                    p.line(Line::new("|update|/|grad|", self.state.update_ratio.points.clone()).color(SERIES_COLORS[1]));
                });
            });
            let unit = if self.state.base_config.model == crate::train::config::ModelKind::Cnn { "images" } else { "tokens" };
            plot_cell(ui, &format!("{unit} / s"), wdt, h, &format!("{unit}/s"), &[&self.state.tokens_per_s.points], 1, |p| {
                p.line(Line::new(format!("{unit}/s"), self.state.tokens_per_s.points.clone()).color(SERIES_COLORS[0]))
            });
            ui.end_row();
            let bands = self.state.memory_bands();
            let tops: Vec<[f64; 2]> = bands.last().map_or(Vec::new(), |b| b.xs.iter().zip(&b.upper).map(|(x, y)| [*x, *y]).collect());
            plot_cell(ui, "device memory (MiB, byte ledger)", wdt, h, "MiB", &[&tops], bands.len(), |p| {
                for (i, b) in bands.iter().enumerate() {
                    let color = MEMORY_COLORS[i % MEMORY_COLORS.len()];
                    p.add(
                        egui_plot::FilledArea::new(b.name, &b.xs, &b.lower, &b.upper)
                            .fill_color(color.gamma_multiply(0.8))
                            .stroke(egui::Stroke::new(1.0, color)),
                    );
                }
            });
            self.memory_vs_b(ui, wdt, h);
            ui.end_row();
        });
    }

    /// Predicted memory against B (memory model, with and without activation checkpointing for
    /// the GPT), the byte ledger's actual total at the current B, the binding limit.
    fn memory_vs_b(&self, ui: &mut egui::Ui, w: f32, h: f32) {
        use crate::model::memory::{MemoryOptions, ModelSpec};
        let c = &self.state.base_config;
        let confirmed = self.state.confirmed;
        let b_now = confirmed.map_or(self.state.settings.micro_batch, |c| c.micro_batch);
        let k_now = confirmed.map_or(self.state.settings.accum_steps, |c| c.accum_steps);
        let ck_now = confirmed.is_some_and(|c| c.checkpoint_activations);
        let prec_now = confirmed.map_or(crate::gpu::Precision::F32, |c| c.precision);
        let max_b = (b_now * 2).max(64);
        let mib = |x: u64| x as f64 / (1 << 20) as f64;
        let spec = self.memory_spec();
        let kernels = self.gpu.kernels().matmul();
        let limits = crate::model::layout::SlabLimits::of(&self.gpu);
        let opts = |checkpoint_activations: bool, precision: crate::gpu::Precision| MemoryOptions { checkpoint_activations, precision, kernels, limits, vocab_chunk: c.vocab_chunk, grad_stats: c.grad_stats, dropout: c.dropout > 0.0 };
        let curve = |o: MemoryOptions| -> Vec<[f64; 2]> {
            (1..=max_b).map(|b| [b as f64, mib(spec.predict(b, k_now, 0, o).total())]).collect()
        };
        let predicted_now = spec.predict(b_now, k_now, 0, opts(ck_now, prec_now)).total();
        let actual_now = self.state.memory.back().map(|(_, m)| m.total());
        let limit = self.gpu.limits().max_storage_buffer_binding_size;
        let title = match actual_now {
            Some(a) => format!("memory vs B: predicted {} / ledger {} at B {b_now}", human_bytes(predicted_now), human_bytes(a)),
            None => format!("memory vs B: predicted {} at B {b_now}", human_bytes(predicted_now)),
        };
        let top = curve(opts(false, crate::gpu::Precision::F32));
        let headroom = state::legend_headroom(&[&top, &[[1.0, 0.0]]], state::legend_fraction(8, h));
        ui.vertical(|ui| {
            ui.label(&title);
            // eight legend rows: top left, over the empty area above the small-B end of the curves
            let mut plot = history_plot(&title, w, h, "MiB").x_axis_label("micro-batch B").legend(
                Legend::default().position(Corner::LeftTop).background_alpha(0.6).follow_insertion_order(true),
            );
            if let Some(t) = headroom {
                plot = plot.include_y(t);
            }
            plot.show(ui, |p| {
                if matches!(spec, ModelSpec::Gpt(_)) {
                    use crate::gpu::Precision::{F16, F32};
                    p.line(Line::new("predicted, f32", curve(opts(false, F32))));
                    p.line(Line::new("predicted, f32 checkpointed", curve(opts(true, F32))));
                    p.line(Line::new("predicted, f16", curve(opts(false, F16))));
                    p.line(Line::new("predicted, f16 checkpointed", curve(opts(true, F16))));
                } else {
                    p.line(Line::new("predicted total", curve(opts(false, crate::gpu::Precision::F32))));
                }
                let largest = (1..=max_b)
                    .map(|b| [b as f64, mib(spec.largest_binding(b, opts(ck_now, prec_now)))])
                    .collect::<Vec<_>>();
                p.line(Line::new("largest binding", largest));
                if let Some(a) = actual_now {
                    p.points(Points::new("byte ledger now", vec![[b_now as f64, mib(a)]]).radius(5.0));
                }
                p.vline(VLine::new("current B", b_now as f64));
                p.hline(HLine::new(format!("one binding ≤ {}", human_bytes(limit)), mib(limit)));
            });
        });
    }
}

/// Line colours of the history plots.
const SERIES_COLORS: [egui::Color32; 2] = [egui::Color32::from_rgb(90, 160, 230), egui::Color32::from_rgb(230, 140, 40)];

/// Colours of the memory categories' bands.
const MEMORY_COLORS: [egui::Color32; 5] = [
    egui::Color32::from_rgb(70, 130, 180),
    egui::Color32::from_rgb(230, 140, 40),
    egui::Color32::from_rgb(80, 170, 80),
    egui::Color32::from_rgb(200, 70, 70),
    egui::Color32::from_rgb(150, 110, 190),
];

/// A history plot: x is the optimizer step, a fixed y-axis width (so new ticks never shift the
/// plot), the legend top right in the headroom the caller includes.
fn history_plot<'a>(id: &str, w: f32, h: f32, y_label: &str) -> Plot<'a> {
    Plot::new(id)
        .width(w)
        .height(h)
        .legend(Legend::default().position(Corner::RightTop).background_alpha(0.6).follow_insertion_order(true))
        .x_axis_label("optimizer step")
        .y_axis_label(y_label.to_string())
        .y_axis_min_width(56.0)
}

/// "-" for a figure that is not known.
fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite()).map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// A colour for t in [0, 1]: dark blue through teal to yellow (viridis-like).
fn heat_color(t: f64) -> egui::Color32 {
    let stops = [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let x = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let l = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    egui::Color32::from_rgb(l(a.0, b.0), l(a.1, b.1), l(a.2, b.2))
}

/// Tensor x micro-batch heat map, tensor names on the left, log colour scale; hover shows the value.
fn heat_map(ui: &mut egui::Ui, names: &[String], rows: &[Vec<Option<f64>>], w: f32) {
    let logs: Vec<f64> = rows.iter().flatten().flatten().filter(|v| **v > 0.0).map(|v| v.log10()).collect();
    let lo = logs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let name_w = 175.0;
    let k = rows.first().map_or(0, |r| r.len()).max(1);
    let row_h = 13.0;
    let (rect, resp) = ui.allocate_exact_size(egui::vec2(w, row_h * names.len() as f32 + 18.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    let cell_w = ((w - name_w) / k as f32).max(2.0);
    let font = egui::FontId::monospace(10.0);
    for (t, (name, row)) in names.iter().zip(rows).enumerate() {
        let y = rect.top() + t as f32 * row_h;
        painter.text(egui::pos2(rect.left() + name_w - 4.0, y + row_h / 2.0), egui::Align2::RIGHT_CENTER, name, font.clone(), ui.visuals().text_color());
        for (j, v) in row.iter().enumerate() {
            let r = egui::Rect::from_min_size(egui::pos2(rect.left() + name_w + j as f32 * cell_w, y), egui::vec2(cell_w - 1.0, row_h - 1.0));
            let color = match v {
                Some(v) if *v > 0.0 => heat_color((v.log10() - lo) / span),
                _ => egui::Color32::from_gray(40),
            };
            painter.rect_filled(r, 0.0, color);
        }
    }
    let y = rect.top() + names.len() as f32 * row_h + 2.0;
    for j in 0..k {
        painter.text(egui::pos2(rect.left() + name_w + (j as f32 + 0.5) * cell_w, y), egui::Align2::CENTER_TOP, format!("{}", j + 1), font.clone(), ui.visuals().weak_text_color());
    }
    if let Some(p) = resp.hover_pos() {
        let t = ((p.y - rect.top()) / row_h) as usize;
        let j = ((p.x - rect.left() - name_w) / cell_w).floor();
        if p.x > rect.left() + name_w && j >= 0.0 && t < names.len() && (j as usize) < k {
            let v = rows[t][j as usize];
            resp.on_hover_text(format!("{} micro-batch {}: {}", names[t], j as usize + 1, fmt_opt(v, 6)));
        }
    }
    if lo.is_finite() {
        ui.weak(format!("dark {:.1e} .. bright {:.1e}; x: micro-batch", 10f64.powf(lo), 10f64.powf(hi)));
    }
}

/// Horizontal bars with their names and values (linear, against the largest).
fn named_bars(ui: &mut egui::Ui, items: &[(String, f64)], w: f32) {
    let max = items.iter().map(|x| x.1).filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-30);
    let row_h = 13.0;
    let (rect, _) = ui.allocate_exact_size(egui::vec2(w, row_h * items.len() as f32), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    let name_w = 175.0;
    let val_w = 70.0;
    let font = egui::FontId::monospace(10.0);
    for (i, (name, v)) in items.iter().enumerate() {
        let y = rect.top() + i as f32 * row_h;
        painter.text(egui::pos2(rect.left() + name_w - 4.0, y + row_h / 2.0), egui::Align2::RIGHT_CENTER, name, font.clone(), ui.visuals().text_color());
        let len = ((w - name_w - val_w) as f64 * (v / max).clamp(0.0, 1.0)) as f32;
        painter.rect_filled(egui::Rect::from_min_size(egui::pos2(rect.left() + name_w, y + 1.0), egui::vec2(len.max(1.0), row_h - 3.0)), 0.0, SERIES_COLORS[0]);
        painter.text(egui::pos2(rect.right(), y + row_h / 2.0), egui::Align2::RIGHT_CENTER, format!("{v:.2e}"), font.clone(), ui.visuals().weak_text_color());
    }
}

/// A titled history plot whose y range leaves room above `data` for a legend of `entries` rows.
#[allow(clippy::too_many_arguments)]
fn plot_cell(
    ui: &mut egui::Ui, title: &str, w: f32, h: f32, y_label: &str, data: &[&[[f64; 2]]], entries: usize, f: impl FnOnce(&mut egui_plot::PlotUi),
) {
    ui.vertical(|ui| {
        ui.label(title);
        let mut plot = history_plot(title, w, h, y_label);
        if let Some(top) = state::legend_headroom(data, state::legend_fraction(entries, h)) {
            plot = plot.include_y(top);
        }
        plot.show(ui, |p| f(p));
    });
}
