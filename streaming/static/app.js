// The gateway's page: send camera/microphone (or files, or nothing: the presenter face and typed text)
// over WebRTC, show the input beside the lip-synced stream, and the session's live figures and chart
// (polled from /sessions/{id}/stats once a second). Plain DOM and canvas: nothing is downloaded.
"use strict";

const $ = (id) => document.getElementById(id);
const CHART_POINTS = 60; // one a second: the last minute
const state = {
  pc: null, sessionId: null, timer: null, local: null, connected: false, stats: null,
  health: null, speech: null, chart: [], chartDraws: 0, said: null,
};
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

// What the gateway offers (its avatars, whether it has a presenter face), from /healthz.
async function loadHealth() {
  try {
    const response = await fetch("/healthz");
    const health = await response.json(); // 503 (degraded) still says what is served
    state.health = health;
    const select = $("avatar");
    for (const [name, answering] of Object.entries(health.avatars || {})) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = answering ? name : `${name} (not answering)`;
      select.appendChild(option);
    }
    $("avatar-row").hidden = select.options.length < 2;
    $("health").textContent = `Gateway ${health.status}: backend ${health.backend}, ` +
      `${health.sessions} of ${health.max_sessions} sessions in use`;
  } catch (err) {
    $("health").textContent = `Gateway health unavailable: ${err}`;
  }
  updateRows();
}

function updateRows() {
  const source = $("source").value, speech = $("speech").value;
  $("camera-row").hidden = source !== "camera";
  $("video-file-row").hidden = source !== "files";
  $("mic-row").hidden = speech !== "microphone";
  $("audio-file-row").hidden = speech !== "file";
  $("say-panel").hidden = speech !== "push";
  // A presenter face is the gateway's picture or clip, or the chosen avatar's loop.
  const presenterOption = $("source").querySelector("option[value=presenter]");
  const presenter = !state.health || state.health.presenter || $("avatar").value !== "";
  presenterOption.disabled = !presenter;
  presenterOption.textContent = presenter ? "Presenter (face on the server)" : "Presenter (none on this gateway)";
  updateSay();
}

function updateSay() {
  $("say").disabled = !(state.sessionId && state.speech === "push");
  $("say-rate-value").textContent = $("say-rate").value;
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

function showInput(stream) {
  const video = stream.getVideoTracks()[0];
  $("local").srcObject = video ? new MediaStream([video]) : null; // the picture only: no echo of the mic
  $("local").hidden = !video;
  $("local-placeholder").hidden = Boolean(video);
}

async function start() {
  $("start").disabled = true;
  const source = $("source").value, speech = $("speech").value, avatar = $("avatar").value;
  try {
    setStatus("Opening media…");
    state.local = await localMedia(source, speech);
    showInput(state.local);
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
    if (avatar) body.avatar = avatar;
    const response = await fetch("/offer", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `offer refused (${response.status})`);
    state.sessionId = answer.session_id;
    state.speech = body.speech;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    if (speech === "push") {
      $("push-hint").hidden = false;
      $("push-url").textContent = `${location.origin.replace(/^http/, "ws")}/speech/${state.sessionId}?rate=16000`;
    }
    $("stop").disabled = false;
    state.chart = [];
    drawChart();
    updateSay();
    state.timer = setInterval(pollStats, 1000);
  } catch (err) {
    setStatus(`Error: ${err.message || err}`);
    await stop();
  }
}

// The text box: the server speaks it (espeak-ng) into this session; new text replaces what is still queued.
async function speak(event) {
  event.preventDefault();
  if (!state.sessionId) return;
  $("say").disabled = true;
  $("say-status").textContent = "Speaking…";
  try {
    const body = {
      text: $("say-text").value, voice: $("say-voice").value, rate: Number($("say-rate").value), interrupt: true,
    };
    const response = await fetch(`/say/${state.sessionId}`, {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
    });
    const reply = await response.json();
    if (!response.ok) throw new Error(reply.error || `refused (${response.status})`);
    state.said = reply;
    $("say-status").textContent = `Queued ${reply.speech_s.toFixed(1)} s of speech (voice ${reply.voice}).`;
  } catch (err) {
    $("say-status").textContent = `Not spoken: ${err.message || err}`;
  } finally {
    updateSay();
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
    const delay = s.stages_ms_p50.added_delay ?? s.added_delay_ms;
    $("stat-mouth-p50").textContent = ms(s.mouth_ms.p50);
    $("stat-mouth-p99").textContent = ms(s.mouth_ms.p99);
    $("stat-delay").textContent = ms(delay);
    $("stat-fps").textContent = s.fps.toFixed(1);
    const drops = Object.values(s.dropped).reduce((a, b) => a + b, 0);
    $("stat-drops").textContent = String(drops);
    const generated = s.outcomes.generated || 0;
    const passed = Object.entries(s.outcomes).filter(([k]) => k !== "generated").reduce((a, [, v]) => a + v, 0);
    $("stat-outcomes").textContent = `${generated} / ${passed}`;
    const v = $("remote");
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    $("stat-received").textContent = q ? `${q.totalVideoFrames} frames, ${v.videoWidth}x${v.videoHeight}` : "–";
    $("stat-queued").textContent = s.speech_queued_s == null ? "–" : `${s.speech_queued_s.toFixed(1)} s`;
    state.chart.push({ mouth: s.mouth_ms.p50, mouthP99: s.mouth_ms.p99, delay });
    if (state.chart.length > CHART_POINTS) state.chart.shift();
    drawChart();
  } catch (err) {
    setStatus(`Stats unavailable: ${err}`);
  }
}

const SERIES = [["mouth", "#4fc3f7", 2], ["mouthP99", "#4fc3f7", 1], ["delay", "#ffb74d", 2]];

// Mouth latency and added delay over the last minute, on one ms axis (plain canvas).
function drawChart() {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 34, bottom = h - 14, top = 8;
  ctx.clearRect(0, 0, w, h);
  const values = state.chart.flatMap((p) => SERIES.map(([key]) => p[key])).filter((v) => v != null);
  const step = 50, max = Math.max(step * 2, Math.ceil((Math.max(0, ...values) * 1.1) / step) * step);
  const y = (v) => bottom - (v / max) * (bottom - top);
  const x = (i) => left + (i / (CHART_POINTS - 1)) * (w - left - 4);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = "#888";
  ctx.strokeStyle = "#333";
  ctx.lineWidth = 1;
  const gridStep = max / 4;
  for (let v = 0; v <= max + 1e-6; v += gridStep) {
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(w - 4, y(v));
    ctx.stroke();
    ctx.fillText(`${Math.round(v)}`, 2, y(v) + 3);
  }
  ctx.fillText("ms", 2, bottom + 12);
  ctx.fillText("← 60 s", left, bottom + 12);
  const offset = CHART_POINTS - state.chart.length; // the newest point at the right edge
  for (const [key, color, width] of SERIES) {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.setLineDash(width === 1 ? [3, 3] : []);
    ctx.beginPath();
    let drawing = false;
    state.chart.forEach((p, i) => {
      if (p[key] == null) { drawing = false; return; }
      if (drawing) ctx.lineTo(x(offset + i), y(p[key])); else ctx.moveTo(x(offset + i), y(p[key]));
      drawing = true;
    });
    ctx.stroke();
    // The newest value as a dot: a series with one point so far has no line to show.
    const last = state.chart.length - 1;
    if (last >= 0 && state.chart[last][key] != null) {
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x(offset + last), y(state.chart[last][key]), width + 1, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.setLineDash([]);
  state.chartDraws += 1;
}

async function stop() {
  clearInterval(state.timer);
  state.timer = null;
  if (state.sessionId) {
    fetch(`/sessions/${state.sessionId}`, { method: "DELETE", headers: authHeaders() }).catch(() => {});
  }
  if (state.pc) state.pc.close();
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  Object.assign(state, { pc: null, sessionId: null, local: null, connected: false, speech: null });
  $("local").srcObject = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  $("push-hint").hidden = true;
  updateSay();
}

$("source").addEventListener("change", updateRows);
$("speech").addEventListener("change", updateRows);
$("avatar").addEventListener("change", updateRows);
$("say-rate").addEventListener("input", updateSay);
$("say-panel").addEventListener("submit", speak);
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
updateRows();
drawChart();
listDevices();
loadHealth();
