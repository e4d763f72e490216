// The SDK's refusals of a bundle, apart from the modules that raise them so that each can import
// them: the bundle's files and manifest (BundleError), and its signature (BundleSignatureError).

export class BundleError extends Error {}

export class BundleSignatureError extends BundleError {}
