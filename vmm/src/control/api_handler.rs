//! Serves API requests on the VMM thread (the API thread only parses and forwards).

use std::sync::{Arc, Mutex};

use api::{ApiReceiver, ApiRequest, Refusal, Response};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::json;

use crate::passthrough::hotplug::Hotplug;
use crate::vcpus::vcpu::{ExitSignal, GuestExit};
use crate::vcpus::vcpu_set::{VcpuSet, VcpuSetError};
use crate::vcpus::vm_state::VmEvent;

pub struct ApiHandler {
    rx: ApiReceiver,
    vcpus: Arc<VcpuSet>,
    exit: Arc<ExitSignal>,
    config: serde_json::Value,
    hotplug: Arc<Mutex<Hotplug>>,
}

impl ApiHandler {
    pub fn new(
        rx: ApiReceiver,
        vcpus: Arc<VcpuSet>,
        exit: Arc<ExitSignal>,
        config: serde_json::Value,
        hotplug: Arc<Mutex<Hotplug>>,
    ) -> Self {
        Self { rx, vcpus, exit, config, hotplug }
    }

    /// Runs a device request on the hotplug state; 204 or the refusal's status.
    fn on_hotplug(&self, f: impl FnOnce(&mut Hotplug) -> Result<(), api::ApiError>) -> Response {
        match self.hotplug.lock() {
            Ok(mut h) => match f(&mut h) {
                Ok(()) => Response::no_content(),
                Err(e) => Response::error(e.status, &e.message),
            },
            Err(_) => Response::error(Refusal::Internal.status(), "hotplug state is unavailable"),
        }
    }

    fn wrong_state(e: VcpuSetError) -> Response {
        let kind = match e {
            VcpuSetError::WrongState(_) => Refusal::WrongVmState,
            VcpuSetError::Poisoned | VcpuSetError::PauseTimeout { .. } => Refusal::Internal,
        };
        Response::error(kind.status(), &e.to_string())
    }

    pub fn handle(&mut self, request: ApiRequest) -> Response {
        match request {
            ApiRequest::VmmPing => Response::json(
                200,
                json!({ "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id() }).to_string(),
            ),
            ApiRequest::VmInfo => {
                let state = self.vcpus.state().to_string();
                let (devices, usage, timings) =
                    self.hotplug.lock().map(|mut h| (h.info(), h.usage(), h.timings())).unwrap_or_default();
                Response::json(
                    200,
                    json!({ "state": state, "config": self.config, "devices": devices, "resources": usage,
                            "timings": timings })
                    .to_string(),
                )
            }
            ApiRequest::VmPause => match self.vcpus.pause() {
                Ok(()) => {
                    // vCPUs first, then the devices: nothing runs that could touch them.
                    if let Ok(mut h) = self.hotplug.lock() {
                        h.pause_devices();
                    }
                    crate::process::events::emit("vm", "paused", serde_json::Value::Null);
                    Response::no_content()
                }
                Err(e) => Self::wrong_state(e),
            },
            ApiRequest::VmResume => {
                if let Err(e) = self.vcpus.check(VmEvent::Resume) {
                    return Self::wrong_state(e);
                }
                // Devices first (re-acquired, mapped, interrupts on), then the vCPUs.
                if let Ok(mut h) = self.hotplug.lock() {
                    h.resume_devices();
                }
                match self.vcpus.resume() {
                    Ok(()) => {
                        crate::process::events::emit("vm", "resumed", serde_json::Value::Null);
                        Response::no_content()
                    }
                    Err(e) => Self::wrong_state(e),
                }
            }
            ApiRequest::VmReleaseDevice { id, live: false } => self.on_hotplug(|h| h.release(&id)),
            ApiRequest::VmReleaseDevice { id, live: true } => self.on_hotplug(|h| h.live_release(&id)),
            ApiRequest::VmAcquireDevice { id, path } => self.on_hotplug(|h| h.acquire(&id, path)),
            ApiRequest::VmmShutdown => {
                self.exit.raise(GuestExit::VmmShutdown);
                Response::no_content()
            }
            ApiRequest::VmShutdown => match self.hotplug.lock() {
                Ok(h) => {
                    h.power_button();
                    Response::no_content()
                }
                Err(_) => Response::error(Refusal::Internal.status(), "the power button is unavailable"),
            },
            ApiRequest::VmAddDevice(req) => match self.hotplug.lock() {
                Ok(mut h) => match h.add(req) {
                    Ok(info) => Response::json(200, info.to_string()),
                    Err(e) => Response::error(e.status, &e.message),
                },
                Err(_) => Response::error(Refusal::Internal.status(), "hotplug state is unavailable"),
            },
            ApiRequest::VmRemoveDevice { id } => self.on_hotplug(|h| h.remove(&id)),
        }
    }
}

impl MutEventSubscriber for ApiHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.rx.wake, EventSet::IN)) {
            log::error!("cannot watch the API: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.rx.wake.read();
        while let Ok(message) = self.rx.requests.try_recv() {
            let response = self.handle(message.request);
            // The client may have gone away; nothing to do then.
            let _ = message.reply.send(response);
        }
    }
}
