//! The desktop app (eframe on the wgpu renderer). It shares eframe's device with the trainer,
//! which runs on its own thread (`train::live`); the UI never blocks: it drains trainer events
//! each frame, is woken by `request_repaint` when one arrives, and sends `Control`s.

pub mod state;

use std::path::PathBuf;
use std::sync::Arc;

use egui_plot::{Bar, BarChart, HLine, Legend, Line, Plot, Points, VLine};

use crate::gpu::{Category, Gpu, human_bytes};
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
}

impl GradscopeApp {
    fn new(ctx: egui::Context, gpu: Gpu, settings: Settings, opts: AppOptions) -> Self {
        let state = AppState::new(settings, opts.config.clone());
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
            self.send(Control::Resume);
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
        egui::CentralPanel::default().show(ui, |ui| self.plots(ui));
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
            ui.label(format!("last window stepped by hand: step {} ({} micro-batches)", w.step, w.done()));
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
            ui.label("tokens");
            ui.label("|G|");
            ui.label("cos(g, G)");
            ui.end_row();
            for c in w.cells.iter().flatten() {
                ui.label(format!("{}", c.index + 1));
                ui.label(format!("{:.4}", c.loss));
                ui.label(format!("{:.0}", c.tokens));
                ui.label(if c.accumulated_norm.is_finite() { format!("{:.3}", c.accumulated_norm) } else { "-".into() });
                ui.label(if c.cosine.is_finite() { format!("{:.3}", c.cosine) } else { "-".into() });
                ui.end_row();
            }
        });
        if let Some(last) = w.cells.iter().flatten().last() {
            if !last.tensor_norms.is_empty() {
                ui.label("accumulated gradient norm per tensor");
                let bars: Vec<Bar> = last.tensor_norms.iter().enumerate().map(|(i, (n, v))| Bar::new(i as f64, *v).name(n)).collect();
                Plot::new("tensor norms").height(110.0).show_axes([false, true]).show(ui, |p| p.bar_chart(BarChart::new("|G|", bars)));
            }
        }
        if let Some(rep) = &w.applied {
            let m = &rep.metrics;
            ui.label(format!(
                "step {}: global norm {:.3}{}, loss {:.4}",
                m.step,
                m.grad_norm,
                if m.clipped { format!(" -> clipped to {}", self.state.confirmed.map_or(0.0, |c| c.grad_clip)) } else { " (not clipped)".into() },
                m.train_loss
            ));
            if let Some(ur) = &rep.update_ratios {
                ui.label("update / weight per tensor");
                let bars: Vec<Bar> = ur.iter().enumerate().map(|(i, (n, v))| Bar::new(i as f64, *v).name(n)).collect();
                Plot::new("update ratios").height(110.0).show_axes([false, true]).show(ui, |p| p.bar_chart(BarChart::new("|dw|/|w|", bars)));
            }
        }
    }

    fn plots(&mut self, ui: &mut egui::Ui) {
        let h = (ui.available_height() / 3.0 - 24.0).max(120.0);
        let wdt = ui.available_width() / 2.0 - 8.0;
        egui::Grid::new("plots").num_columns(2).show(ui, |ui| {
            plot_cell(ui, "loss", wdt, h, |p| {
                p.line(Line::new("train (per micro-batch)", self.state.micro_loss.points.clone()).color(egui::Color32::from_gray(140)));
                p.line(Line::new("train (per step)", self.state.train_loss.points.clone()));
                p.line(Line::new("validation", self.state.val_loss.points.clone()));
                p.points(egui_plot::Points::new("validation points", self.state.val_loss.points.clone()).radius(3.0));
            });
            plot_cell(ui, "global grad norm (before clip)", wdt, h, |p| {
                p.line(Line::new("|g|", self.state.grad_norm.points.clone()));
                if let Some(c) = self.state.confirmed {
                    if c.grad_clip > 0.0 {
                        p.hline(HLine::new("clip", c.grad_clip));
                    }
                }
            });
            ui.end_row();
            plot_cell(ui, "learning rate and |update| / |grad|", wdt, h, |p| {
                p.line(Line::new("lr", self.state.lr.points.clone()));
                p.line(Line::new("|update|/|grad|", self.state.update_ratio.points.clone()));
            });
            let unit = if self.state.base_config.model == crate::train::config::ModelKind::Cnn { "images" } else { "tokens" };
            plot_cell(ui, &format!("{unit} / s"), wdt, h, |p| p.line(Line::new(format!("{unit}/s"), self.state.tokens_per_s.points.clone())));
            ui.end_row();
            plot_cell(ui, "device memory (MiB, byte ledger)", wdt, h, |p| {
                // stacked: each line is the running sum of the categories up to it
                let mut acc: Vec<[f64; 2]> = self.state.memory.iter().map(|(s, _)| [*s, 0.0]).collect();
                for c in Category::ALL {
                    for (i, (_, m)) in self.state.memory.iter().enumerate() {
                        acc[i][1] += m.get(c) as f64 / (1 << 20) as f64;
                    }
                    p.line(Line::new(c.name(), acc.clone()).fill(0.0));
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
        let vocab = self.state.derived.as_ref().map_or(65, |d| d.vocab_size);
        let confirmed = self.state.confirmed;
        let b_now = confirmed.map_or(self.state.settings.micro_batch, |c| c.micro_batch);
        let k_now = confirmed.map_or(self.state.settings.accum_steps, |c| c.accum_steps);
        let ck_now = confirmed.is_some_and(|c| c.checkpoint_activations);
        let prec_now = confirmed.map_or(crate::gpu::Precision::F32, |c| c.precision);
        let max_b = (b_now * 2).max(64);
        let mib = |x: u64| x as f64 / (1 << 20) as f64;
        let spec = match c.model {
            crate::train::config::ModelKind::Gpt => ModelSpec::Gpt(GptConfig {
                vocab_size: vocab, block_size: c.block_size, n_layer: c.n_layer, n_head: c.n_head, n_embd: c.n_embd,
            }),
            crate::train::config::ModelKind::Cnn => {
                let side = if c.dataset == crate::data::images::Dataset::Mnist { 28 } else { 8 };
                ModelSpec::Cnn(crate::reference::cnn_model::CnnConfig::new(side, side, vocab, c.norm))
            }
        };
        let kernels = crate::gpu::kernels::MatmulVariant::for_device(self.gpu.kind);
        let limits = crate::model::layout::SlabLimits::of(&self.gpu);
        let opts = |checkpoint_activations: bool, precision: crate::gpu::Precision| MemoryOptions { checkpoint_activations, precision, kernels, limits, vocab_chunk: c.vocab_chunk, grad_stats: c.grad_stats };
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
        plot_cell(ui, &title, w, h, |p| {
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
    }
}

fn plot_cell(ui: &mut egui::Ui, title: &str, w: f32, h: f32, f: impl FnOnce(&mut egui_plot::PlotUi)) {
    ui.vertical(|ui| {
        ui.label(title);
        Plot::new(title).width(w).height(h).legend(Legend::default()).show(ui, |p| f(p));
    });
}
