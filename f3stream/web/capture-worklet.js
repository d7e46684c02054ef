// AudioWorklet: the page's audio source -> mono float32 chunks at the AudioContext's own rate,
// posted to the main thread. Protocol version 2 lets the page send audio at that rate (the
// server resamples with libsoxr), so this only mixes down and batches; no network here.

class F3Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    // 20 ms at the context's rate: small messages keep the latency low
    this.chunk = o.chunkSamples || Math.round(sampleRate / 50);
    this.buf = new Float32Array(this.chunk);
    this.fill = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop") {
        this.flushChunk();
        this.running = false;
        this.port.postMessage("stopped"); // after the last chunk: the page may flush now
      }
    };
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
    for (let i = 0; i < n; i++) {
      let x = 0;
      for (const ch of input) x += ch[i];
      this.buf[this.fill++] = x / input.length; // mono mix
      if (this.fill === this.chunk) this.flushChunk();
    }
    return true;
  }
}

registerProcessor("f3-capture", F3Capture);
