"""Where Tortoise's weights come from: the registry of released checkpoint files and their model configurations.

The released configurations are data, kept here and nowhere else.
"""

HUB_REPO = "Manmay/tortoise-tts"

# Constructor keyword arguments of each released network (those the original implementation passes).
RELEASED_CONFIGS = {
    "autoregressive": dict(max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=30,
                           model_dim=1024, heads=16, number_text_tokens=255, start_text_token=255,
                           checkpointing=False, train_solo_embeddings=False),
    "diffusion": dict(model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
                      in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0,
                      unconditioned_percentage=0),
    "clvp": dict(dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
                 text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20, speech_heads=12,
                 speech_seq_len=430, use_xformers=True),
    "cvvp": dict(model_dim=512, transformer_heads=8, dropout=0, mel_codes=8192, conditioning_enc_depth=8,
                 cond_mask_percentage=0, speech_enc_depth=8, speech_mask_percentage=0, latent_multiplier=1),
    "vocoder": dict(),
    "rlg_auto": dict(channels=1024),
    "rlg_diffuser": dict(channels=2048),
    "classifier": dict(classes=2, spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2,
                       attn_blocks=4, num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5,
                       distribute_zero_label=False),
    "hifidecoder": dict(in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                        resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                        upsample_initial_channel=512, upsample_factors=[8, 8, 2, 2], cond_channels=1024),
}
