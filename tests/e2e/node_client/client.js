// node client.js PROTO HOST:PORT TOKEN
// Lists the caller's INBOX with ListMessages, reads its newest message with
// GetMessage (FULL), and prints both replies as one JSON document. A failed
// call prints {"error": {"code", "details"}} and exits 1.
"use strict";
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protoPath, address, token] = process.argv.slice(2);
const definition = protoLoader.loadSync(protoPath, {
  keepCase: true, longs: String, enums: String, bytes: String, defaults: true,
});
const { Mailbox } = grpc.loadPackageDefinition(definition).mailyard.mailbox.v1;
const client = new Mailbox(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (token) metadata.add("authorization", `Bearer ${token}`);

function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, metadata, { deadline }, (error, reply) =>
      error ? reject(error) : resolve(reply));
  });
}

(async () => {
  try {
    const listed = await call("ListMessages", { label: "INBOX" });
    const out = { list: listed };
    if (listed.messages.length > 0) {
      out.message = await call("GetMessage", { id: listed.messages[0].id, format: "FULL" });
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  } catch (error) {
    process.stdout.write(JSON.stringify({ error: { code: error.code, details: error.details } }) + "\n");
    process.exitCode = 1;
  } finally {
    client.close();
  }
})();
