// f3stream browser demo: microphone -> AudioWorklet (24 kHz mono float32) -> websocket
// (protocol v1, encode) -> latents heat map + latency plot; optionally the latents are sent
// to a second connection (decode) and the reconstruction is played.
// Plain script, no build step. State for tests and the console: window.f3demo.
"use strict";

(() => {
  const RATE = 24000;
  const HEADER = 40;
  const MAGIC = "F3ST";
  const COLS = 400; // heat map / latency history: 400 frames = 16 s

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const defaultUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  $("url").value = params.get("url") || defaultUrl;
  $("playback").checked = params.get("playback") === "1";

  const demo = {
    frames: [], // latent rows (arrays of latent_dim numbers), in stream order
    latencyMs: [], // per frame: client clock, completing chunk sent -> frame received
    serverLatencyMs: [], // per frame: header send_us - recv_us
    errors: [],
    running: false,
    done: false,
    ready: null, // the server's ready message
    contextRate: null,
    sentSamples: 0,
    decodedSamples: 0,
    flushed: null, // frames count from the encode flush
    pcmChunks: [], // exactly the samples sent to the server (float32)
    decodedChunks: [], // reconstruction received from the decode connection
    start, stop,
    pcmBase64: () => b64(concat(demo.pcmChunks)),
    framesBase64: () => b64(Float32Array.from(demo.frames.flat())),
    decodedBase64: () => b64(concat(demo.decodedChunks)),
  };
  window.f3demo = demo;

  let ctx = null, stream = null, source = null, node = null;
  let enc = null, dec = null; // websockets
  let pending = []; // chunks captured before the encode connection is ready
  let sendLog = []; // [cumulative samples after the chunk, performance.now() at send]
  let playAt = 0;
  let fpsWindow = [];
  let stopping = null;

  function concat(chunks) {
    const n = chunks.reduce((a, c) => a + c.length, 0);
    const out = new Float32Array(n);
    let o = 0;
    for (const c of chunks) { out.set(c, o); o += c.length; }
    return out;
  }

  function b64(f32) {
    const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }

  function fail(msg) {
    const text = String(msg);
    demo.errors.push(text);
    $("errors").textContent = demo.errors.join("\n");
    console.error("f3demo:", text);
  }

  // -- protocol ------------------------------------------------------------------------------
  function parseFrame(buf) {
    const v = new DataView(buf);
    const magic = String.fromCharCode(v.getUint8(0), v.getUint8(1), v.getUint8(2), v.getUint8(3));
    if (buf.byteLength < HEADER || magic !== MAGIC || v.getUint8(4) !== 1) {
      throw new Error("not a protocol v1 frame message");
    }
    if (v.getUint8(6) !== 1) throw new Error("expected a float32 payload");
    const h = {
      kind: v.getUint8(5), flags: v.getUint8(7), seq: v.getUint32(8, true),
      index: v.getUint32(12, true), rows: v.getUint32(16, true), width: v.getUint32(20, true),
      recvUs: Number(v.getBigInt64(24, true)), sendUs: Number(v.getBigInt64(32, true)),
    };
    h.payload = new Float32Array(buf, HEADER, h.rows * h.width);
    return h;
  }

  // Opens a connection, sends the hello, resolves with [socket, ready message].
  function connect(url, hello, onBinary, onText) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      let ready = false;
      ws.onopen = () => ws.send(JSON.stringify(hello));
      ws.onerror = () => { if (!ready) reject(new Error(`cannot connect to ${url}`)); };
      ws.onclose = (e) => {
        if (!ready) reject(new Error(`connection closed before ready (${e.code})`));
        else if (e.code !== 1000 && e.code !== 1005 && !demo.done) {
          fail(`${hello.direction} connection closed: ${e.code} ${e.reason}`);
        }
      };
      ws.onmessage = (e) => {
        if (typeof e.data !== "string") {
          try { onBinary(parseFrame(e.data)); } catch (err) { fail(err.message || err); }
          return;
        }
        const m = JSON.parse(e.data);
        if (m.type === "error") {
          fail(`server error (${hello.direction}): ${m.code}: ${m.message}`);
          if (!ready) reject(new Error(m.code));
        } else if (m.type === "ready" && !ready) {
          ready = true;
          resolve([ws, m]);
        } else {
          onText(m);
        }
      };
    });
  }

  // -- encode direction ------------------------------------------------------------------------
  function sendChunk(chunk) {
    demo.pcmChunks.push(chunk); // recorded exactly as sent, so tests can tokenize it offline
    demo.sentSamples += chunk.length;
    sendLog.push([demo.sentSamples, performance.now()]);
    enc.send(chunk.buffer.byteLength === chunk.length * 4 ? chunk.buffer : chunk.slice().buffer);
  }

  function onCaptured(chunk) {
    if (!demo.running && !stopping) return;
    if (enc && enc.readyState === WebSocket.OPEN && demo.ready) sendChunk(chunk);
    else pending.push(chunk);
  }

  // Client-side latency: when was the chunk holding the frame's last sample sent?
  function sentAt(endSample) {
    while (sendLog.length > 1 && sendLog[0][0] < endSample) sendLog.shift();
    return sendLog.length && sendLog[0][0] >= endSample ? sendLog[0][1] : null;
  }

  function onFrames(h) {
    if (h.kind !== 1 && h.kind !== 3) return;
    const dim = demo.ready.latent_dim;
    const now = performance.now();
    const latents = new Float32Array(h.rows * dim);
    for (let r = 0; r < h.rows; r++) {
      const row = h.payload.subarray(r * h.width, r * h.width + dim);
      latents.set(row, r * dim);
      demo.frames.push(Array.from(row));
      const t = sentAt((h.index + r + 1) * demo.ready.hop_length);
      demo.latencyMs.push(t === null ? NaN : now - t);
      demo.serverLatencyMs.push((h.sendUs - h.recvUs) / 1000);
      fpsWindow.push(now);
      drawColumn(row);
    }
    if (dec && dec.readyState === WebSocket.OPEN) dec.send(latents.buffer);
    status();
  }

  // -- decode direction / playback -----------------------------------------------------------
  function onAudio(h) {
    if (h.kind !== 4) return;
    const pcm = Float32Array.from(h.payload);
    demo.decodedChunks.push(pcm);
    demo.decodedSamples += pcm.length;
    if (!pcm.length || !ctx || ctx.state === "closed") return;
    const b = ctx.createBuffer(1, pcm.length, RATE); // the context resamples if it is not 24 kHz
    b.copyToChannel(pcm, 0);
    const src = ctx.createBufferSource();
    src.buffer = b;
    src.connect(ctx.destination);
    // a small jitter buffer: start 150 ms ahead, then play back to back
    playAt = Math.max(playAt, ctx.currentTime + 0.15);
    src.start(playAt);
    playAt += b.duration;
  }

  // -- drawing ---------------------------------------------------------------------------------
  const heat = $("heat").getContext("2d");
  const lat = $("lat").getContext("2d");
  let scale = 1e-6; // running max |latent| for the colour scale
  let latDirty = false;

  function colour(x) { // diverging: blue (negative) - black - red/yellow (positive)
    const t = Math.max(-1, Math.min(1, x / scale));
    return t >= 0 ? [255 * Math.min(1, 2 * t), 255 * Math.max(0, 2 * t - 1), 40 * t]
                  : [40 * -t, 255 * Math.max(0, -2 * t - 1), 255 * Math.min(1, -2 * t)];
  }

  function drawColumn(row) {
    for (const x of row) scale = Math.max(scale * 0.9995, Math.abs(x));
    const c = heat.canvas;
    if (c.height !== row.length) c.height = row.length;
    heat.drawImage(c, -1, 0); // scroll left by one frame
    const img = heat.createImageData(1, row.length);
    row.forEach((x, i) => {
      const [r, g, b] = colour(x);
      img.data.set([r, g, b, 255], 4 * i);
    });
    heat.putImageData(img, c.width - 1, 0);
    latDirty = true;
  }

  function drawLatency() {
    if (!latDirty) return;
    latDirty = false;
    const c = lat.canvas, H = c.height, W = c.width;
    const e2e = demo.latencyMs.slice(-COLS), srv = demo.serverLatencyMs.slice(-COLS);
    const top = Math.max(50, ...e2e.filter(Number.isFinite), ...srv);
    lat.fillStyle = "#111";
    lat.fillRect(0, 0, W, H);
    lat.fillStyle = "#888";
    lat.font = "10px sans-serif";
    lat.fillText(`${top.toFixed(0)} ms`, 2, 10);
    for (const [vals, col] of [[e2e, "#4cf"], [srv, "#fc4"]]) {
      lat.strokeStyle = col;
      lat.beginPath();
      let gap = true; // no point for a frame without a measurement (e.g. the flushed one)
      vals.forEach((v, i) => {
        if (!Number.isFinite(v)) { gap = true; return; }
        const x = W - vals.length + i, y = H - (H - 12) * v / top;
        gap ? lat.moveTo(x, y) : lat.lineTo(x, y);
        gap = false;
      });
      lat.stroke();
    }
  }
  setInterval(drawLatency, 100); // redraw at most 10 times/s, not per frame

  function median(a) {
    const s = a.filter(Number.isFinite).sort((x, y) => x - y);
    return s.length ? s[Math.floor(s.length / 2)] : NaN;
  }

  function status(text) {
    const now = performance.now();
    while (fpsWindow.length && fpsWindow[0] < now - 2000) fpsWindow.shift();
    const last = demo.latencyMs.slice(-25), lastSrv = demo.serverLatencyMs.slice(-25);
    $("status").textContent = [
      text || (demo.running ? "streaming" : demo.done ? "stopped" : "idle"),
      `frames received: ${demo.frames.length}   frames/s: ${(fpsWindow.length / 2).toFixed(1)}`,
      `latency (last 1 s, median): end to end ${median(last).toFixed(1)} ms, ` +
        `server ${median(lastSrv).toFixed(1)} ms`,
      `audio sent: ${(demo.sentSamples / RATE).toFixed(2)} s   ` +
        `context rate: ${demo.contextRate} Hz` + (dec || demo.decodedSamples
          ? `   reconstruction: ${(demo.decodedSamples / RATE).toFixed(2)} s` : ""),
    ].join("\n");
  }

  // -- start / stop ---------------------------------------------------------------------------
  async function start() {
    if (demo.running || stopping) return;
    Object.assign(demo, {frames: [], latencyMs: [], serverLatencyMs: [], errors: [],
                         done: false, ready: null, sentSamples: 0, decodedSamples: 0,
                         flushed: null, pcmChunks: [], decodedChunks: []});
    pending = []; sendLog = []; fpsWindow = []; playAt = 0;
    $("errors").textContent = "";
    $("start").disabled = true;
    demo.running = true;
    status("starting");
    try {
      if (ctx && ctx.state !== "closed") await ctx.close(); // the previous run's playback
      try {
        // the browser resamples the microphone; ?rate=native tries the worklet's resampler
        ctx = new AudioContext(params.get("rate") === "native" ? {} : {sampleRate: RATE});
      } catch (e) {
        ctx = new AudioContext(); // rate not supported: the worklet resamples
      }
      demo.contextRate = ctx.sampleRate;
      await ctx.audioWorklet.addModule("/demo/capture-worklet.js");
      // no echo cancellation / noise suppression / AGC: the model should hear the raw signal
      stream = await navigator.mediaDevices.getUserMedia({audio: {
        channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false,
      }});
      const url = $("url").value;
      const token = params.get("token");
      const hello = {type: "hello", version: 1, sample_rate: RATE, format: "float32",
                     return: "latents", direction: "encode", payload_dtype: "float32"};
      if (token) hello.token = token;
      source = ctx.createMediaStreamSource(stream);
      node = new AudioWorkletNode(ctx, "f3-capture", {numberOfInputs: 1, numberOfOutputs: 0,
                                                       processorOptions: {chunkSamples: 480}});
      node.port.onmessage = (e) => {
        if (e.data === "stopped") { if (stopping) stopping.resolveCapture(); }
        else onCaptured(e.data);
      };
      source.connect(node);
      if (ctx.state !== "running") await ctx.resume();
      const encP = connect(url, hello, onFrames, (m) => {
        if (m.type === "flushed") { demo.flushed = m.frames; if (stopping) stopping.resolveEnc(); }
      });
      if ($("playback").checked) {
        const dh = {type: "hello", version: 1, sample_rate: RATE, direction: "decode",
                    payload_dtype: "float32"};
        if (token) dh.token = token;
        [dec] = await connect(url, dh, onAudio, (m) => {
          if (m.type === "flushed" && stopping) stopping.resolveDec();
        });
      }
      [enc, demo.ready] = await encP;
      for (const c of pending) sendChunk(c);
      pending = [];
      $("stop").disabled = false;
      status();
    } catch (e) {
      fail(e.message || e);
      await teardown();
    }
  }

  async function stop() {
    if (!demo.running || stopping) return;
    $("stop").disabled = true;
    status("stopping: flushing");
    let resolveCapture, resolveEnc, resolveDec;
    const captured = new Promise((r) => { resolveCapture = r; });
    const encFlushed = new Promise((r) => { resolveEnc = r; });
    const decFlushed = new Promise((r) => { resolveDec = r; });
    stopping = {resolveCapture, resolveEnc, resolveDec};
    const timeout = (p, ms) => Promise.race([p, new Promise((r) => setTimeout(r, ms))]);
    try {
      stream.getTracks().forEach((t) => t.stop());
      node.port.postMessage("stop"); // the worklet sends its partial chunk, then "stopped"
      await timeout(captured, 2000);
      demo.running = false;
      for (const c of pending) sendChunk(c);
      pending = [];
      enc.send(JSON.stringify({type: "flush"})); // last partial frame, then "flushed"
      await timeout(encFlushed, 10000);
      if (dec && dec.readyState === WebSocket.OPEN) {
        dec.send(JSON.stringify({type: "flush"})); // the decoder's held-back tail
        await timeout(decFlushed, 10000);
      }
    } catch (e) {
      fail(e.message || e);
    }
    await teardown();
  }

  async function teardown() {
    demo.running = false;
    demo.done = true; // before closing, so the closes are not reported as errors
    for (const ws of [enc, dec]) {
      if (ws && ws.readyState === WebSocket.OPEN) ws.close(1000);
    }
    if (stream) stream.getTracks().forEach((t) => t.stop());
    if (source) source.disconnect();
    // keep the context alive while the reconstruction is still playing
    if (ctx && !dec) await ctx.close();
    enc = dec = stream = source = node = null;
    stopping = null;
    $("start").disabled = false;
    $("stop").disabled = true;
    status();
  }

  $("start").onclick = () => start();
  $("stop").onclick = () => stop();
  status();
})();
