//! An RTSP camera stand-in on 127.0.0.1 (any free port): serves a GStreamer launch line at /cam. It can
//! be stopped (every client connection closed, the port released) and started again on the same port.

use gstreamer as gst;
use gstreamer_rtsp_server as rtsp_server;
use gstreamer_rtsp_server::prelude::*;

pub struct Camera {
    pub port: u16,
    launch: String,
    shared: bool,
    running: Option<Running>,
}

struct Running {
    server: rtsp_server::RTSPServer,
    ctx: gst::glib::MainContext,
    source: gst::glib::SourceId,
    main_loop: gst::glib::MainLoop,
    thread: std::thread::JoinHandle<()>,
}

impl Camera {
    /// The bundled demo video, one media shared by every viewer.
    pub fn demo_file() -> Self {
        let file = super::root().join("assets/shapes-demo.mp4");
        Self::start(
            &format!(
                "( filesrc location={} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )",
                file.display()
            ),
            true,
        )
    }

    /// A live H.264 test pattern (320x240, 15 frames/s, endless, a media per viewer, as a camera has).
    pub fn live_pattern() -> Self {
        Self::start(&Self::pattern_launch((320, 240)), false)
    }

    fn pattern_launch((width, height): (u32, u32)) -> String {
        format!(
            "( videotestsrc is-live=true pattern=ball \
             ! video/x-raw,width={width},height={height},framerate=15/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 \
             ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    }

    fn start(launch: &str, shared: bool) -> Self {
        let running = Self::serve(launch, shared, 0);
        Camera {
            port: running.server.bound_port() as u16,
            launch: launch.to_string(),
            shared,
            running: Some(running),
        }
    }

    fn serve(launch: &str, shared: bool, port: u16) -> Running {
        gst::init().unwrap();
        let server = rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let factory = rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(shared);
        server.mount_points().unwrap().add_factory("/cam", factory);
        let ctx = gst::glib::MainContext::new();
        let source = server.attach(Some(&ctx)).unwrap();
        assert!(server.bound_port() > 0);
        let main_loop = gst::glib::MainLoop::new(Some(&ctx), false);
        let (ml, c) = (main_loop.clone(), ctx.clone());
        let thread = std::thread::spawn(move || {
            let _g = c.acquire().unwrap();
            ml.run();
        });
        Running {
            server,
            ctx,
            source,
            main_loop,
            thread,
        }
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    /// The camera goes down: every client connection is closed and the port is released.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.server
                .client_filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
            if let Some(s) = r.ctx.find_source_by_id(&r.source) {
                s.destroy();
            }
            r.main_loop.quit();
            let _ = r.thread.join();
        }
    }

    /// The live pattern comes back on the same port at another frame size.
    pub fn restart_at(&mut self, size: (u32, u32)) {
        self.launch = Self::pattern_launch(size);
        self.restart();
    }

    /// The camera comes back on the same port.
    pub fn restart(&mut self) {
        assert!(self.running.is_none());
        let r = Self::serve(&self.launch, self.shared, self.port);
        assert_eq!(r.server.bound_port() as u16, self.port);
        self.running = Some(r);
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop();
    }
}
