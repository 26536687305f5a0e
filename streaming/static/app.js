// The gateway's page: send camera/microphone (or files) over WebRTC, show the lip-synced stream
// and the session's live figures (polled from /sessions/{id}/stats once a second).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { pc: null, sessionId: null, timer: null, local: null, connected: false, stats: null };
window.lipsync = state; // read by the browser test

function setStatus(text) { $("status").textContent = text; }

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function listDevices() {
  try {
    const devices = await navigator.mediaDevices.enumerateDevices();
    for (const [kind, select] of [["videoinput", $("camera")], ["audioinput", $("microphone")]]) {
      select.innerHTML = "";
      devices.filter((d) => d.kind === kind).forEach((d, i) => {
        const option = document.createElement("option");
        option.value = d.deviceId;
        option.textContent = d.label || `${kind} ${i + 1}`;
        select.appendChild(option);
      });
    }
  } catch (err) {
    setStatus(`Cannot list devices: ${err}`);
  }
}

function updateRows() {
  const source = $("source").value, speech = $("speech").value;
  $("camera-row").hidden = source !== "camera";
  $("video-file-row").hidden = source !== "files";
  $("mic-row").hidden = speech !== "microphone";
  $("audio-file-row").hidden = speech !== "file";
}

async function fileStream(input, kind) {
  const file = input.files[0];
  if (!file) throw new Error(`choose a ${kind} file first`);
  const el = document.createElement(kind === "video" ? "video" : "audio");
  el.src = URL.createObjectURL(file);
  el.loop = true;
  el.muted = kind === "video"; // the speech is heard from the returned stream, not twice
  await el.play();
  return el.captureStream ? el.captureStream() : el.mozCaptureStream();
}

async function localMedia(source, speech) {
  const tracks = [];
  const wantCamera = source === "camera", wantMic = speech === "microphone";
  if (wantCamera || wantMic) {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: wantCamera ? { deviceId: $("camera").value || undefined, width: 640, height: 480 } : false,
      audio: wantMic ? { deviceId: $("microphone").value || undefined } : false,
    });
    tracks.push(...stream.getTracks());
  }
  if (source === "files") tracks.push(...(await fileStream($("video-file"), "video")).getVideoTracks());
  if (speech === "file") tracks.push(...(await fileStream($("audio-file"), "audio")).getAudioTracks());
  return new MediaStream(tracks);
}

function gatheringDone(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000); // a gathering that hangs on one interface must not block the call
  });
}

async function start() {
  $("start").disabled = true;
  const source = $("source").value, speech = $("speech").value;
  try {
    setStatus("Opening media…");
    state.local = await localMedia(source, speech);
    const pc = new RTCPeerConnection({ iceServers: [] });
    state.pc = pc;
    const remote = new MediaStream();
    $("remote").srcObject = remote;
    pc.ontrack = (event) => { remote.addTrack(event.track); };
    pc.onconnectionstatechange = () => {
      state.connected = pc.connectionState === "connected";
      setStatus(`Connection: ${pc.connectionState}`);
      if (["failed", "closed"].includes(pc.connectionState)) stop();
    };
    const video = state.local.getVideoTracks()[0], audio = state.local.getAudioTracks()[0];
    if (video) pc.addTrack(video, state.local); else pc.addTransceiver("video", { direction: "recvonly" });
    if (audio) pc.addTrack(audio, state.local); else pc.addTransceiver("audio", { direction: "recvonly" });
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc);
    setStatus("Connecting…");
    const body = {
      sdp: pc.localDescription.sdp, type: "offer",
      speech: speech === "push" ? "push" : "microphone",
      mode: source === "presenter" ? "presenter" : "camera",
    };
    const response = await fetch("/offer", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `offer refused (${response.status})`);
    state.sessionId = answer.session_id;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    if (speech === "push") {
      $("push-hint").hidden = false;
      $("push-url").textContent = `${location.origin.replace(/^http/, "ws")}/speech/${state.sessionId}?rate=16000`;
    }
    $("stop").disabled = false;
    state.timer = setInterval(pollStats, 1000);
  } catch (err) {
    setStatus(`Error: ${err.message || err}`);
    await stop();
  }
}

function ms(value) { return value == null ? "–" : `${value.toFixed(1)} ms`; }

async function pollStats() {
  if (!state.sessionId) return;
  try {
    const response = await fetch(`/sessions/${state.sessionId}/stats`, { headers: authHeaders() });
    if (!response.ok) return;
    const s = await response.json();
    state.stats = s;
    $("stat-mouth-p50").textContent = ms(s.mouth_ms.p50);
    $("stat-mouth-p99").textContent = ms(s.mouth_ms.p99);
    $("stat-delay").textContent = ms(s.stages_ms_p50.added_delay ?? s.added_delay_ms);
    $("stat-fps").textContent = s.fps.toFixed(1);
    const drops = Object.values(s.dropped).reduce((a, b) => a + b, 0);
    $("stat-drops").textContent = String(drops);
    const generated = s.outcomes.generated || 0;
    const passed = Object.entries(s.outcomes).filter(([k]) => k !== "generated").reduce((a, [, v]) => a + v, 0);
    $("stat-outcomes").textContent = `${generated} / ${passed}`;
    const v = $("remote");
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    $("stat-received").textContent = q ? `${q.totalVideoFrames} frames, ${v.videoWidth}x${v.videoHeight}` : "–";
  } catch (err) {
    setStatus(`Stats unavailable: ${err}`);
  }
}

async function stop() {
  clearInterval(state.timer);
  state.timer = null;
  if (state.sessionId) {
    fetch(`/sessions/${state.sessionId}`, { method: "DELETE", headers: authHeaders() }).catch(() => {});
  }
  if (state.pc) state.pc.close();
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  Object.assign(state, { pc: null, sessionId: null, local: null, connected: false });
  $("start").disabled = false;
  $("stop").disabled = true;
  $("push-hint").hidden = true;
}

$("source").addEventListener("change", updateRows);
$("speech").addEventListener("change", updateRows);
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
updateRows();
listDevices();
