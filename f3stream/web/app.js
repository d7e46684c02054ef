// f3stream browser demo. The source (microphone or an audio file) -> AudioWorklet (mono
// float32 at the AudioContext's own rate) -> websocket, protocol version 2, encode direction
// with voice activity -> latents, speech probabilities, speech events; the latents go on to a
// second connection (decode direction, at the same rate) -> the reconstruction. Drawn live:
// input and reconstruction spectrograms (a small FFT below), the latents, the speech
// probability and speaking state, latency numbers and a sparkline; A/B plays the last 5 s of
// the original and of the reconstruction.
// Plain script, no build step. State for tests and the console: window.f3demo.
"use strict";

(() => {
  const V2_RATES = [8000, 16000, 22050, 24000, 32000, 44100, 48000]; // docs/protocol.md, 8
  const HEADER = 40;
  const MAGIC = "F3ST";
  const FLAG_FINAL = 1, FLAG_SPEECH = 2;
  const LAT_COLS = 250; // latents / voice activity history: 250 frames = 10 s
  const SPEC_COLS = 500; // spectrogram history: 500 columns of 10 ms = 5 s
  const AB_SECONDS = 5;
  const KEEP_SECONDS = 300; // audio kept for A/B and the console (older audio is dropped)
  const DASH = "–";

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const defaultUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  $("url").value = params.get("url") || defaultUrl;
  $("playback").checked = params.get("playback") === "1";
  const wantVad = params.get("vad") !== "0";

  const demo = {
    frames: [], // latent rows (arrays of latent_dim numbers), in stream order (the last
    // KEEP_SECONDS; framesDropped before them)
    framesDropped: 0,
    latencyMs: [], // per frame: client clock, chunk holding its last sample sent -> received
    serverLatencyMs: [], // per frame: header send_us - recv_us
    speechProb: [], // per frame, with voice activity
    vadEvents: [], // speech_start / speech_end messages as received
    speaking: null, // true / false once voice activity runs
    vadAvailable: null, // false: the server has no voice activity
    errors: [],
    running: false,
    done: false,
    ready: null, // the encode connection's ready message
    decReady: null, // the decode connection's ready message
    contextRate: null,
    sentSamples: 0, // at the context rate
    decodedSamples: 0, // at the context rate
    flushed: null, // frames count from the encode flush
    pcmChunks: [], // the samples sent to the server (float32), the last KEEP_SECONDS
    pcmDropped: 0, // samples dropped from the front of pcmChunks
    decodedChunks: [], // the reconstruction received from the decode connection
    decodedDropped: 0,
    specColumns: {input: 0, reconstruction: 0},
    ab: {playing: null, plays: 0, ended: 0, seconds: null},
    start, stop, playAB, stopAB, abWindow, spectrumColumn,
    pcmBase64: () => b64(concat(demo.pcmChunks)),
    framesBase64: () => b64(Float32Array.from(demo.frames.flat())),
    decodedBase64: () => b64(concat(demo.decodedChunks)),
  };
  window.f3demo = demo;

  let ctx = null, stream = null, source = null, fileNode = null, node = null;
  let fileLeft = null; // samples of the file still to send (its end: silence, not sent)
  let enc = null, dec = null; // websockets
  let pending = []; // chunks captured before the encode connection is ready
  let sendLog = []; // [cumulative samples after the chunk, performance.now() at send]
  let playAt = 0;
  let fpsWindow = [];
  let stopping = null;
  let abSource = null;

  function concat(chunks) {
    const n = chunks.reduce((a, c) => a + c.length, 0);
    const out = new Float32Array(n);
    let o = 0;
    for (const c of chunks) { out.set(c, o); o += c.length; }
    return out;
  }

  // samples [a, b) of a chunk list whose first chunk starts at sample `first`
  function slice(chunks, first, a, b) {
    const out = new Float32Array(Math.max(0, b - a));
    let pos = first;
    for (const c of chunks) {
      const lo = Math.max(a, pos), hi = Math.min(b, pos + c.length);
      if (hi > lo) out.set(c.subarray(lo - pos, hi - pos), lo - a);
      pos += c.length;
      if (pos >= b) break;
    }
    return out;
  }

  function keep(chunksKey, droppedKey, samples) { // drops audio older than KEEP_SECONDS
    const chunks = demo[chunksKey];
    let total = samples - demo[droppedKey];
    const limit = KEEP_SECONDS * demo.contextRate;
    while (chunks.length > 1 && total - chunks[0].length >= limit) {
      total -= chunks[0].length;
      demo[droppedKey] += chunks.shift().length;
    }
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
      throw new Error("not a frame message");
    }
    if (v.getUint8(6) !== 1) throw new Error("expected a float32 payload");
    const h = {
      kind: v.getUint8(5), flags: v.getUint8(7), seq: v.getUint32(8, true),
      index: v.getUint32(12, true), rows: v.getUint32(16, true), width: v.getUint32(20, true),
      recvUs: Number(v.getBigInt64(24, true)), sendUs: Number(v.getBigInt64(32, true)),
    };
    h.payload = new Float32Array(buf, HEADER, h.rows * h.width);
    h.speech = h.flags & FLAG_SPEECH // the speech probabilities follow the payload
      ? new Float32Array(buf, HEADER + 4 * h.rows * h.width, h.rows) : null;
    return h;
  }

  // Opens a connection and sends the hello; resolves with [socket, ready message]. An error
  // before ready rejects with an Error carrying the server's code (no message on the page).
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
          const err = new Error(`server error (${hello.direction}): ${m.code}: ${m.message}`);
          if (!ready) reject(Object.assign(err, {code: m.code, serverMessage: m.message}));
          else fail(err.message);
        } else if (m.type === "ready" && !ready) {
          ready = true;
          resolve([ws, m]);
        } else {
          onText(m);
        }
      };
    });
  }

  function hello(direction, extra) {
    const h = {type: "hello", version: 2, sample_rate: demo.contextRate, direction,
               payload_dtype: "float32", ...extra};
    const token = params.get("token");
    if (token) h.token = token;
    return h;
  }

  // The encode connection, with voice activity unless the server has none: then without.
  async function openEncoder(url) {
    const h = hello("encode", {format: "float32", return: "latents"});
    if (wantVad) {
      try {
        return await connect(url, {...h, vad: true}, onFrames, onEncoderText);
      } catch (e) {
        if (!(e.code === "bad_field" && /vad/.test(e.serverMessage || ""))) throw e;
        demo.vadAvailable = false; // e.g. no silero-vad package on the server
      }
    }
    return connect(url, h, onFrames, onEncoderText);
  }

  // -- encode direction ------------------------------------------------------------------------
  function sendChunk(chunk) {
    demo.pcmChunks.push(chunk); // recorded exactly as sent, so tests can tokenize it offline
    demo.sentSamples += chunk.length;
    keep("pcmChunks", "pcmDropped", demo.sentSamples);
    sendLog.push([demo.sentSamples, performance.now()]);
    enc.send(chunk.buffer.byteLength === chunk.length * 4 ? chunk.buffer : chunk.slice().buffer);
    specIn.push(chunk);
  }

  function onCaptured(chunk) {
    if (!demo.running && !stopping) return;
    if (fileLeft !== null) {
      chunk = chunk.subarray(0, Math.max(0, fileLeft));
      fileLeft -= chunk.length;
      if (!chunk.length) return;
    }
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
    // the frame's last sample, in the samples this page sent (the context's rate)
    const perFrame = demo.ready.hop_length * demo.contextRate / demo.ready.sample_rate;
    const latents = new Float32Array(h.rows * dim);
    for (let r = 0; r < h.rows; r++) {
      const row = h.payload.subarray(r * h.width, r * h.width + dim);
      latents.set(row, r * dim);
      demo.frames.push(Array.from(row));
      // frames of the flush (zero padding, the resampler's tail) have no sending time
      const t = h.flags & FLAG_FINAL ? null : sentAt(Math.ceil((h.index + r + 1) * perFrame));
      demo.latencyMs.push(t === null ? null : now - t);
      demo.serverLatencyMs.push((h.sendUs - h.recvUs) / 1000);
      const p = h.speech ? h.speech[r] : null;
      if (p !== null) demo.speechProb.push(p);
      fpsWindow.push(now);
      drawFrame(h.index + r, row, p);
    }
    if (dec && dec.readyState === WebSocket.OPEN) dec.send(latents.buffer);
    const excess = demo.frames.length - KEEP_SECONDS * 25;
    if (excess >= 250) { // per-frame records: the last KEEP_SECONDS, dropped 10 s at a time
      for (const k of ["frames", "latencyMs", "serverLatencyMs", "speechProb"]) {
        demo[k].splice(0, excess);
      }
      demo.framesDropped += excess;
    }
    render();
  }

  function onEncoderText(m) {
    if (m.type === "flushed") {
      demo.flushed = m.frames;
      if (stopping) stopping.resolveEnc();
    } else if (m.type === "speech_start" || m.type === "speech_end") {
      demo.vadEvents.push(m);
      demo.speaking = m.type === "speech_start";
      paintSpeaking(m.frame_index, demo.speaking);
      render();
    }
  }

  // -- decode direction / playback -----------------------------------------------------------
  function onAudio(h) {
    if (h.kind !== 4) return;
    const pcm = Float32Array.from(h.payload); // at the context's rate (the hello's)
    demo.decodedChunks.push(pcm);
    demo.decodedSamples += pcm.length;
    keep("decodedChunks", "decodedDropped", demo.decodedSamples);
    specOut.push(pcm);
    render();
    if (!pcm.length || !ctx || ctx.state === "closed" || !$("playback").checked) return;
    const b = ctx.createBuffer(1, pcm.length, ctx.sampleRate);
    b.copyToChannel(pcm, 0);
    const src = ctx.createBufferSource();
    src.buffer = b;
    src.connect(ctx.destination);
    // a small jitter buffer: start 150 ms ahead, then play back to back
    playAt = Math.max(playAt, ctx.currentTime + 0.15);
    src.start(playAt);
    playAt += b.duration;
  }

  // -- A/B: the last AB_SECONDS of the original and of the reconstruction --------------------
  // The reconstruction is aligned with the input (docs/protocol.md, 3 and 8): sample k of
  // both is the same moment, so both play the same stretch [a, b).
  function abWindow() {
    const b = Math.min(demo.sentSamples, demo.decodedSamples);
    const a = Math.max(0, b - AB_SECONDS * (demo.contextRate || 0), demo.pcmDropped,
                       demo.decodedDropped);
    return [a, b];
  }

  function playAB(which) {
    const [a, b] = abWindow();
    if (!ctx || ctx.state === "closed" || b - a < 0.2 * demo.contextRate) return false;
    const pcm = which === "original"
      ? slice(demo.pcmChunks, demo.pcmDropped, a, b)
      : slice(demo.decodedChunks, demo.decodedDropped, a, b);
    stopAB();
    const buf = ctx.createBuffer(1, pcm.length, ctx.sampleRate);
    buf.copyToChannel(pcm, 0);
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.connect(ctx.destination);
    src.onended = () => {
      if (abSource !== src) return;
      abSource = null;
      demo.ab.playing = null;
      demo.ab.ended++;
      render();
    };
    if (ctx.state !== "running") ctx.resume();
    src.start();
    abSource = src;
    Object.assign(demo.ab, {playing: which, plays: demo.ab.plays + 1,
                            seconds: pcm.length / ctx.sampleRate});
    render();
    return true;
  }

  function stopAB() {
    if (!abSource) return;
    const src = abSource;
    abSource = null;
    demo.ab.playing = null;
    try { src.stop(); } catch (e) { /* not started */ }
    render();
  }

  // -- spectrograms: a radix-2 FFT, Hann window, mel-spaced rows ---------------------------------
  function makeFFT(n) {
    const bits = Math.round(Math.log2(n));
    const rev = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      let r = 0;
      for (let b = 0; b < bits; b++) r |= ((i >> b) & 1) << (bits - 1 - b);
      rev[i] = r;
    }
    const cos = new Float64Array(n / 2), sin = new Float64Array(n / 2);
    for (let i = 0; i < n / 2; i++) {
      cos[i] = Math.cos(2 * Math.PI * i / n);
      sin[i] = Math.sin(2 * Math.PI * i / n);
    }
    return (re, im) => { // in place, forward: X[k] = sum x[j] e^(-2 pi i jk / n)
      for (let i = 0; i < n; i++) {
        const j = rev[i];
        if (j > i) {
          let t = re[i]; re[i] = re[j]; re[j] = t;
          t = im[i]; im[i] = im[j]; im[j] = t;
        }
      }
      for (let size = 2; size <= n; size *= 2) {
        const half = size / 2, step = n / size;
        for (let i = 0; i < n; i += size) {
          for (let j = 0, k = 0; j < half; j++, k += step) {
            const p = i + j, q = p + half;
            const tr = re[q] * cos[k] + im[q] * sin[k];
            const ti = im[q] * cos[k] - re[q] * sin[k];
            re[q] = re[p] - tr; im[q] = im[p] - ti;
            re[p] += tr; im[p] += ti;
          }
        }
      }
    };
  }

  const mel = (f) => 2595 * Math.log10(1 + f / 700);
  const imel = (m) => 700 * (10 ** (m / 2595) - 1);
  const DB_LO = -95, DB_HI = -15; // colour range, dB relative to a full-scale sine

  // One STFT analysis at `rate`: ~21 ms Hann window, 10 ms hop, `rows` mel bands from 0 to
  // 12 kHz (the model's band) or the Nyquist frequency if lower.
  function analysis(rate, rows) {
    const n = 2 ** Math.round(Math.log2(rate * 0.021));
    const win = new Float64Array(n);
    let wsum = 0;
    for (let i = 0; i < n; i++) {
      win[i] = 0.5 - 0.5 * Math.cos(2 * Math.PI * i / n);
      wsum += win[i];
    }
    const binHz = rate / n, top = Math.min(12000, rate / 2);
    const lo = new Uint32Array(rows), hi = new Uint32Array(rows);
    for (let r = 0; r < rows; r++) {
      const f0 = imel(mel(top) * r / rows), f1 = imel(mel(top) * (r + 1) / rows);
      lo[r] = Math.min(n / 2, Math.round(f0 / binHz));
      hi[r] = Math.min(n / 2 + 1, Math.max(lo[r] + 1, Math.round(f1 / binHz)));
    }
    return {n, hop: Math.round(rate / 100), win, norm: (wsum / 2) ** 2, lo, hi, rows,
            fft: makeFFT(n), re: new Float64Array(n), im: new Float64Array(n)};
  }

  // dB per row of one window of samples (n of them), 0 dB = a full-scale sine
  function columnDb(an, x, offset) {
    const {n, win, re, im} = an;
    for (let i = 0; i < n; i++) { re[i] = x[offset + i] * win[i]; im[i] = 0; }
    an.fft(re, im);
    const out = new Float32Array(an.rows);
    for (let r = 0; r < an.rows; r++) {
      let s = 0;
      for (let k = an.lo[r]; k < an.hi[r]; k++) s += re[k] * re[k] + im[k] * im[k];
      out[r] = 10 * Math.log10(s / (an.hi[r] - an.lo[r]) / an.norm + 1e-12);
    }
    return out;
  }

  // for tests and the console: the rows' dB of the first window of `samples` at `rate`
  function spectrumColumn(samples, rate, rows = 128) {
    const an = analysis(rate, rows);
    const x = new Float32Array(an.n);
    x.set(samples.slice(0, an.n));
    const db = columnDb(an, x, 0);
    return {db: Array.from(db), n: an.n, hop: an.hop,
            centreHz: Array.from(an.lo, (l, r) => (l + an.hi[r] - 1) / 2 * rate / an.n)};
  }

  // magma-like colour map, 256 entries
  const CMAP = (() => {
    const stops = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                   [245, 125, 21], [250, 193, 39], [252, 255, 164]];
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = i / 255 * (stops.length - 1), k = Math.min(stops.length - 2, Math.floor(t));
      for (let c = 0; c < 3; c++) {
        lut[3 * i + c] = stops[k][c] + (stops[k + 1][c] - stops[k][c]) * (t - k);
      }
    }
    return lut;
  })();

  // A scrolling canvas whose columns are keyed by a position in the stream: the right edge
  // shows column `head`; `follow` lets two canvases share one time axis.
  class Scroller {
    constructor(canvas) {
      this.c = canvas;
      this.g = canvas.getContext("2d");
      this.clear();
    }
    clear() {
      this.head = -1;
      this.g.fillStyle = "#000";
      this.g.fillRect(0, 0, this.c.width, this.c.height);
    }
    advance(to) { // scroll so that column `to` is at the right edge
      const k = to - this.head;
      if (k <= 0) return;
      const W = this.c.width, H = this.c.height;
      if (k < W) this.g.drawImage(this.c, -k, 0);
      this.g.fillStyle = "#000";
      this.g.fillRect(Math.max(0, W - k), 0, Math.min(k, W), H);
      this.head = to;
    }
    x(index) { return this.c.width - 1 - (this.head - index); }
    put(index, img, y = 0) {
      if (index > this.head) this.advance(index);
      const x = this.x(index);
      if (x >= 0) this.g.putImageData(img, x, y);
    }
  }

  class Spectrogram {
    constructor(canvas, name) {
      this.s = new Scroller(canvas);
      this.name = name;
      this.peers = [];
      this.reset(24000);
    }
    reset(rate) {
      this.an = analysis(rate, this.s.c.height);
      this.buf = new Float32Array(0);
      this.col = 0;
      this.s.clear();
      demo.specColumns[this.name] = 0;
    }
    push(samples) {
      const merged = new Float32Array(this.buf.length + samples.length);
      merged.set(this.buf);
      merged.set(samples, this.buf.length);
      const {n, hop} = this.an;
      let off = 0;
      while (merged.length - off >= n) {
        this.draw(this.col++, columnDb(this.an, merged, off));
        off += hop;
      }
      this.buf = merged.slice(off);
      demo.specColumns[this.name] = this.col;
    }
    draw(index, db) {
      const H = db.length;
      const img = new ImageData(1, H);
      for (let r = 0; r < H; r++) {
        const t = Math.max(0, Math.min(1, (db[r] - DB_LO) / (DB_HI - DB_LO)));
        const i = Math.round(t * 255), y = H - 1 - r; // low frequencies at the bottom
        img.data[4 * y] = CMAP[3 * i];
        img.data[4 * y + 1] = CMAP[3 * i + 1];
        img.data[4 * y + 2] = CMAP[3 * i + 2];
        img.data[4 * y + 3] = 255;
      }
      this.s.put(index, img);
      for (const p of this.peers) p.s.advance(this.s.head); // one time axis for both
    }
  }

  const specIn = new Spectrogram($("spec-in"), "input");
  const specOut = new Spectrogram($("spec-out"), "reconstruction");
  specIn.peers.push(specOut);

  // -- latents, voice activity, latency sparkline ---------------------------------------------
  const heat = new Scroller($("heat"));
  const strip = new Scroller($("vadstrip"));
  const spark = $("spark").getContext("2d");
  let scale = 1e-6; // running max |latent| for the colour scale
  let sparkDirty = false;

  function colour(x) { // diverging: blue (negative) - black - red/yellow (positive)
    const t = Math.max(-1, Math.min(1, x / scale));
    return t >= 0 ? [255 * Math.min(1, 2 * t), 255 * Math.max(0, 2 * t - 1), 40 * t]
                  : [40 * -t, 255 * Math.max(0, -2 * t - 1), 255 * Math.min(1, -2 * t)];
  }

  const SPEAKING = [60, 200, 60], SILENT = [40, 40, 40];

  function drawFrame(index, row, p) {
    for (const x of row) scale = Math.max(scale * 0.9995, Math.abs(x));
    const img = new ImageData(1, row.length);
    row.forEach((x, i) => {
      const [r, g, b] = colour(x);
      img.data.set([r, g, b, 255], 4 * i);
    });
    heat.put(index, img);
    // voice activity strip: 4 rows of probability (grey scale), 2 of speaking state
    const H = strip.c.height, v = new ImageData(1, H);
    const grey = p === null ? 0 : Math.round(255 * p);
    const state = demo.speaking ? SPEAKING : SILENT;
    for (let y = 0; y < H; y++) {
      v.data.set(y < H - 2 ? [grey, grey, grey, 255] : p === null ? [0, 0, 0, 255]
                                                              : [...state, 255], 4 * y);
    }
    strip.put(index, v);
    sparkDirty = true;
  }

  // the speaking state from `index` on (events arrive after the frames that decided them)
  function paintSpeaking(index, speaking) {
    const H = strip.c.height, x0 = Math.max(0, strip.x(index));
    strip.g.fillStyle = `rgb(${(speaking ? SPEAKING : SILENT).join(",")})`;
    strip.g.fillRect(x0, H - 2, strip.c.width - x0, 2);
  }

  function drawSpark() {
    if (!sparkDirty) return;
    sparkDirty = false;
    const c = spark.canvas, H = c.height, W = c.width;
    const e2e = demo.latencyMs.slice(-W), srv = demo.serverLatencyMs.slice(-W);
    const top = Math.max(20, ...e2e.filter(Number.isFinite), ...srv.filter(Number.isFinite));
    spark.fillStyle = "#000";
    spark.fillRect(0, 0, W, H);
    spark.fillStyle = "#999";
    spark.font = "10px sans-serif";
    spark.fillText(`${top.toFixed(0)} ms`, 2, 10);
    for (const [vals, col] of [[e2e, "#4cf"], [srv, "#fc4"]]) {
      spark.strokeStyle = col;
      spark.beginPath();
      let gap = true; // no point for a frame without a measurement (the flushed ones)
      vals.forEach((v, i) => {
        if (!Number.isFinite(v)) { gap = true; return; }
        const x = W - vals.length + i, y = H - 1 - (H - 13) * v / top;
        gap ? spark.moveTo(x, y) : spark.lineTo(x, y);
        gap = false;
      });
      spark.stroke();
    }
  }

  // -- text fields: "–" until a value exists ------------------------------------------------
  function median(a) {
    const s = a.filter(Number.isFinite).sort((x, y) => x - y);
    return s.length ? s[Math.floor(s.length / 2)] : null;
  }

  function fmt(v, digits, unit = "") {
    return typeof v === "number" && Number.isFinite(v) ? `${v.toFixed(digits)}${unit}` : null;
  }

  function show(id, text) {
    const el = $(id);
    const t = text === null || text === undefined || text === "" ? DASH : String(text);
    if (el.textContent !== t) el.textContent = t;
  }

  let statusText = null;

  function render(text) {
    if (text !== undefined) statusText = text;
    const now = performance.now();
    while (fpsWindow.length && fpsWindow[0] < now - 2000) fpsWindow.shift();
    const rate = demo.contextRate;
    show("status", statusText || (demo.running ? "streaming" : demo.done ? "stopped" : "idle"));
    const nFrames = demo.frames.length + demo.framesDropped;
    show("f-frames", nFrames ? String(nFrames) : null);
    show("f-fps", demo.running && demo.ready ? fmt(fpsWindow.length / 2, 1) : null);
    const e2e = median(demo.latencyMs.slice(-25)), srv = median(demo.serverLatencyMs.slice(-25));
    show("f-e2e", fmt(e2e, 1, " ms"));
    show("f-server", fmt(srv, 1, " ms"));
    show("f-sent", rate && demo.sentSamples ? fmt(demo.sentSamples / rate, 2, " s") : null);
    show("f-recon", rate && demo.decodedSamples ? fmt(demo.decodedSamples / rate, 2, " s") : null);
    show("f-rate", rate ? `${rate} Hz` + (rate === 24000 ? " (the model's)"
                                                         : " (server resamples)") : null);
    show("f-resampler", demo.ready ? fmt(demo.ready.resampler_latency_ms, 1, " ms") : null);
    let vad = null;
    if (!wantVad) vad = "off (?vad=0)";
    else if (demo.vadAvailable === false) vad = "not available on this server";
    else if (demo.speaking !== null) vad = demo.speaking ? "speaking" : "silent";
    else if (demo.ready && demo.ready.vad) vad = "silent";
    show("vad-state", vad);
    $("vad-state").className = vad === "speaking" ? "speaking" : "";
    const p = demo.speechProb.length ? demo.speechProb[demo.speechProb.length - 1] : null;
    show("f-prob", fmt(p, 2));
    const starts = demo.vadEvents.filter((m) => m.type === "speech_start").length;
    show("f-segments", demo.ready && demo.ready.vad ? String(starts) : null);
    const [a, b] = abWindow();
    const abReady = !!ctx && ctx.state !== "closed" && rate && b - a >= 0.2 * rate;
    $("play-a").disabled = $("play-b").disabled = !abReady;
    show("f-ab", demo.ab.playing ? `playing ${demo.ab.playing === "original" ? "A" : "B"}, ` +
         `${fmt(demo.ab.seconds, 1, " s")}` : abReady ? `${fmt((b - a) / rate, 1, " s")} ready`
                                                      : null);
  }
  setInterval(() => { drawSpark(); render(); }, 200);

  // -- start / stop ---------------------------------------------------------------------------
  function makeContext() {
    const want = Number(params.get("rate")); // ?rate=24000 etc.; default: the device's rate
    if (V2_RATES.includes(want)) return new AudioContext({sampleRate: want});
    const c = new AudioContext();
    if (V2_RATES.includes(c.sampleRate)) return c;
    c.close(); // e.g. 96 kHz: the browser resamples the source to 48 kHz for us
    return new AudioContext({sampleRate: 48000});
  }

  async function openSource() {
    if ($("source").value === "file") {
      const file = $("file").files[0];
      if (!file) throw new Error("choose an audio file first");
      const buf = await ctx.decodeAudioData(await file.arrayBuffer());
      fileNode = ctx.createBufferSource();
      fileNode.buffer = buf;
      fileNode.onended = () => { fileNode = null; stop(); }; // the file's end ends the stream
      return fileNode;
    }
    // no echo cancellation / noise suppression / AGC: the model should hear the raw signal
    stream = await navigator.mediaDevices.getUserMedia({audio: {
      channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false,
    }});
    return ctx.createMediaStreamSource(stream);
  }

  async function start() {
    if (demo.running || stopping) return;
    stopAB();
    Object.assign(demo, {frames: [], framesDropped: 0, latencyMs: [], serverLatencyMs: [], speechProb: [],
                         vadEvents: [], speaking: null, vadAvailable: null, errors: [],
                         done: false, ready: null, decReady: null, sentSamples: 0,
                         decodedSamples: 0, flushed: null, pcmChunks: [], pcmDropped: 0,
                         decodedChunks: [], decodedDropped: 0,
                         ab: {playing: null, plays: 0, ended: 0, seconds: null}});
    pending = []; sendLog = []; fpsWindow = []; playAt = 0; fileLeft = null;
    $("errors").textContent = "";
    $("start").disabled = true;
    demo.running = true;
    render("starting");
    try {
      if (ctx && ctx.state !== "closed") await ctx.close(); // the previous run's playback
      ctx = makeContext();
      demo.contextRate = ctx.sampleRate;
      specIn.reset(ctx.sampleRate);
      specOut.reset(ctx.sampleRate);
      heat.clear();
      strip.clear();
      await ctx.audioWorklet.addModule("/demo/capture-worklet.js");
      source = await openSource();
      node = new AudioWorkletNode(ctx, "f3-capture", {
        numberOfInputs: 1, numberOfOutputs: 0,
        processorOptions: {chunkSamples: Math.round(ctx.sampleRate / 50)}});
      node.port.onmessage = (e) => {
        if (e.data === "stopped") { if (stopping) stopping.resolveCapture(); }
        else onCaptured(e.data);
      };
      if (!fileNode) source.connect(node); // a file: once the connections are ready
      if (ctx.state !== "running") await ctx.resume();
      const url = $("url").value;
      const encP = openEncoder(url);
      const decP = connect(url, hello("decode", {}), onAudio, (m) => {
        if (m.type === "flushed" && stopping) stopping.resolveDec();
      });
      const [e, d] = await Promise.allSettled([encP, decP]);
      if (e.status === "rejected" || d.status === "rejected") {
        for (const r of [e, d]) if (r.status === "fulfilled") r.value[0].close(1000);
        throw e.status === "rejected" ? e.reason : d.reason;
      }
      [enc, demo.ready] = e.value;
      [dec, demo.decReady] = d.value;
      if (heat.c.height !== demo.ready.latent_dim) {
        heat.c.height = demo.ready.latent_dim;
        heat.clear();
      }
      for (const c of pending) sendChunk(c);
      pending = [];
      if (fileNode) {
        // the file's samples at the context's rate, and one render quantum for the start's
        // rounding; the source outputs silence after its end until `onended` stops us
        fileLeft = fileNode.buffer.length + 128;
        source.connect(node);
        fileNode.start();
      }
      $("stop").disabled = false;
      render(null);
    } catch (e) {
      fail(e.message || e);
      await teardown();
    }
  }

  async function stop() {
    if (!demo.running || stopping) return;
    $("stop").disabled = true;
    render("stopping: flushing");
    let resolveCapture, resolveEnc, resolveDec;
    const captured = new Promise((r) => { resolveCapture = r; });
    const encFlushed = new Promise((r) => { resolveEnc = r; });
    const decFlushed = new Promise((r) => { resolveDec = r; });
    stopping = {resolveCapture, resolveEnc, resolveDec};
    const timeout = (p, ms) => Promise.race([p, new Promise((r) => setTimeout(r, ms))]);
    try {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      if (fileNode) { fileNode.onended = null; fileNode.stop(); }
      node.port.postMessage("stop"); // the worklet sends its partial chunk, then "stopped"
      await timeout(captured, 2000);
      demo.running = false;
      for (const c of pending) sendChunk(c);
      pending = [];
      enc.send(JSON.stringify({type: "flush"})); // the last partial frame, then "flushed"
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
    // the context stays open: the reconstruction may still be playing, and A/B plays on it
    enc = dec = stream = source = fileNode = node = fileLeft = null;
    stopping = null;
    $("start").disabled = false;
    $("stop").disabled = true;
    sparkDirty = true;
    drawSpark();
    render(null);
  }

  $("start").onclick = () => start();
  $("stop").onclick = () => stop();
  $("play-a").onclick = () => playAB("original");
  $("play-b").onclick = () => playAB("reconstruction");
  $("source").onchange = () => {
    $("file").hidden = $("source").value !== "file";
    if (!$("file").hidden && !$("file").files.length) $("file").click();
  };
  render();
})();
