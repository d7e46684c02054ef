// AudioWorklet: microphone -> 24 kHz mono float32 chunks posted to the main thread.
// Runs on the audio thread, so it only mixes, resamples and batches; no network here.

const TARGET_RATE = 24000;

class F3Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.chunk = o.chunkSamples || 480; // 20 ms at 24 kHz: small messages keep latency low
    this.ratio = sampleRate / TARGET_RATE; // input samples per output sample
    this.buf = new Float32Array(this.chunk);
    this.fill = 0;
    this.pos = 0; // fractional read position into the current input block (resampling)
    this.prev = 0; // last input sample of the previous block, for interpolation across blocks
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop") {
        this.flushChunk();
        this.running = false;
        this.port.postMessage("stopped"); // after the last chunk: the page may flush now
      }
    };
  }

  push(x) {
    this.buf[this.fill++] = x;
    if (this.fill === this.chunk) this.flushChunk();
  }

  flushChunk() {
    if (this.fill === 0) return;
    const out = this.buf.slice(0, this.fill);
    this.port.postMessage(out, [out.buffer]);
    this.fill = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const n = input[0].length;
    // mix down to mono
    let mono = input[0];
    if (input.length > 1) {
      mono = new Float32Array(n);
      for (const ch of input) for (let i = 0; i < n; i++) mono[i] += ch[i] / input.length;
    }
    if (this.ratio === 1) {
      for (let i = 0; i < n; i++) this.push(mono[i]);
      return true;
    }
    // Fallback when the context could not run at 24 kHz: linear interpolation, with a
    // 2-tap average when downsampling to tame the worst aliasing. Position -1 is `prev`.
    let p = this.pos;
    while (p < n - 1) {
      const i = Math.floor(p);
      const f = p - i;
      const a = i < 0 ? this.prev : mono[i];
      let y = a + (mono[i + 1] - a) * f;
      if (this.ratio > 1.5 && i > 0) y = 0.5 * (y + mono[i]);
      this.push(y);
      p += this.ratio;
    }
    this.prev = mono[n - 1];
    this.pos = p - n; // carry over: negative positions interpolate from `prev`
    return true;
  }
}

registerProcessor("f3-capture", F3Capture);
